"""``compile: true`` runs the training forward under torch.compile; the checkpoint holds the uncompiled
module's weights (no ``_orig_mod.`` prefix) and loads into an uncompiled model."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from mcrnn.cli import main
from mcrnn.models import MCForCausalLM
from mcrnn.train import TrainOptions

MODEL = {"vocab_size": 32, "hidden_size": 16, "num_hidden_layers": 1, "num_heads": 2, "segment_size": 8}
DATA = {"type": "mqar", "vocab_size": 32, "num_pairs": 2, "seq_len": 16, "num_examples": 8, "seed": 0}
TRAIN = {"steps": 2, "batch_size": 2, "warmup_steps": 0, "log_every": 1, "progress": False}


def _train(tmp_path, name: str, **train) -> list[float]:
    config = tmp_path / f"{name}.yaml"
    section = {**TRAIN, **train, "out_dir": str(tmp_path / name)}
    config.write_text(yaml.safe_dump({"model": MODEL, "data": DATA, "train": section}))
    assert main(["train", "--config", str(config)]) == 0
    lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
    return [record["loss"] for record in map(json.loads, lines) if "loss" in record]


def test_compiled_training_saves_a_checkpoint_that_loads_uncompiled(tmp_path, monkeypatch):
    compiled = []
    real_compile = torch.compile

    def spy(module, **kwargs):
        compiled.append((type(module).__name__, kwargs))
        return real_compile(module, **kwargs)

    monkeypatch.setattr(torch, "compile", spy)
    losses = _train(tmp_path, "compiled", compile=True, compile_backend="aot_eager")
    assert compiled == [("MCForCausalLM", {"backend": "aot_eager"})]
    checkpoint = tmp_path / "compiled" / "checkpoints" / "step_00000002"
    weights = load_file(checkpoint / "model.safetensors")
    assert not [key for key in weights if "_orig_mod" in key]
    model = MCForCausalLM.from_pretrained(checkpoint)  # an uncompiled model, strict keys
    assert torch.equal(model.model.embed_tokens.weight, weights["model.embed_tokens.weight"])
    assert losses == pytest.approx(_train(tmp_path, "eager"), rel=1e-4)  # the same training
    assert compiled == [("MCForCausalLM", {"backend": "aot_eager"})]  # compile: false compiles nothing


def test_compile_options_are_checked():
    assert TrainOptions().compile is False
    with pytest.raises(ValueError, match="compile must be true or false, got 'yes'"):
        TrainOptions(compile="yes")
    with pytest.raises(ValueError, match="compile_backend must be a torch.compile backend name, got ''"):
        TrainOptions(compile_backend="")
