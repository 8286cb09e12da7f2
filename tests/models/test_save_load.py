"""A trained model of every mixer survives save_pretrained -> from_pretrained unchanged: the same state dict
and the same logits (no init on the load path overwrites a loaded parameter)."""

from __future__ import annotations

import pytest
import torch
from mixer_configs import MIXERS, TINY
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

import mcrnn  # noqa: F401  (registers the Auto classes)
from mcrnn.models import MCConfig, MCForCausalLM

#: the shared mixer table plus the per-channel-decay memories gla and kda
RELOAD_MIXERS = {
    **MIXERS,
    "gla": {"memory": "gla", "segment_size": 4, "aggregation": "grm"},
    "kda": {"memory": "kda", "segmentation": "log", "aggregation": "grm"},
}


@pytest.mark.parametrize("name", list(RELOAD_MIXERS))
def test_trained_model_reloads_identically(name, tmp_path):
    torch.manual_seed(0)
    model = MCForCausalLM(MCConfig(**TINY, **RELOAD_MIXERS[name], tie_word_embeddings=False)).eval()
    with torch.no_grad():  # stands in for training: every parameter moves away from its init
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    saved, reloaded = model.state_dict(), loaded.state_dict()
    assert saved.keys() == reloaded.keys()
    changed = [key for key in saved if not torch.equal(saved[key], reloaded[key])]
    assert not changed, f"from_pretrained changed {changed}"
    ids = torch.randint(0, TINY["vocab_size"], (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_partly_loaded_deep_memory_layer_keeps_its_loaded_parameters(tmp_path):
    """A checkpoint that lacks one parameter of a titans layer: that one is initialised, the layer's
    loaded ones (the in-place-initialised ``rate_proj.bias`` included) keep their saved values."""
    torch.manual_seed(0)
    model = MCForCausalLM(MCConfig(**TINY, **MIXERS["titans-grm"], tie_word_embeddings=False)).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    missing = "model.layers.0.mixer.deep.rate_proj.weight"
    del weights[missing]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    reloaded = loaded.state_dict()
    assert not torch.equal(reloaded[missing], model.state_dict()[missing])
    changed = [key for key, value in weights.items() if not torch.equal(value, reloaded[key])]
    assert not changed, f"from_pretrained changed {changed}"
