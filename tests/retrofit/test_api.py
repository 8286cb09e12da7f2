"""add_memory_caching / remove_memory_caching: what they accept, refuse (one line each) and restore."""

import pytest
import torch
import transformers
from tiny import VOCAB, logits, tiny_model

from mcrnn.models import MCConfig, MCForCausalLM
from mcrnn.retrofit import CONFIG_KEY, add_memory_caching, remove_memory_caching, supported_layers

IDS = torch.randint(2, VOCAB, (2, 23), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"aggregation": "gmr"}, "aggregation must be one of"),
        ({"aggregation": "ssc"}, "aggregation='ssc' needs top_k"),
        ({"segment_size": 0}, "segment_size must be an int >= 1"),
        ({"segmentation": "log", "segment_size": 4}, "segmentation='log' takes no segment_size"),
        ({"segmentation": "log", "init": "independent"}, "supports init='checkpoint' only"),
        ({"router": "keys"}, "router must be one of"),
        ({"layers": [1]}, "layers [1] are no supported recurrent layers; those are [0]"),
    ],
)
def test_bad_options_are_one_line_errors(options, message):
    model = tiny_model("qwen3_5_text")
    with pytest.raises(ValueError, match=None) as error:
        add_memory_caching(model, **options)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not hasattr(model.config, CONFIG_KEY)  # nothing was changed


def test_a_model_without_recurrent_layers_names_its_layer_classes():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    with pytest.raises(ValueError, match="LlamaForCausalLM has no recurrent layer") as error:
        add_memory_caching(transformers.LlamaForCausalLM(config))
    assert "LlamaAttention, LlamaMLP, LlamaRMSNorm" in str(error.value)


def test_twice_and_remove_without_caching_are_errors():
    model = tiny_model("mamba2")
    with pytest.raises(ValueError, match="no memory caching to remove"):
        remove_memory_caching(model)
    add_memory_caching(model, segment_size=4)
    with pytest.raises(ValueError, match="already has memory caching"):
        add_memory_caching(model, segment_size=8)
    assert model.config.mcrnn_memory_caching["segment_size"] == 4
    remove_memory_caching(model)
    assert not hasattr(model.config, CONFIG_KEY)
    assert "forward" not in supported_layers(model)[0][0].__dict__  # the class's forward again


def test_layers_picks_the_layers_that_change():
    model = tiny_model("mamba2")
    reference = logits(model, IDS)
    add_memory_caching(model, segment_size=4, aggregation="grm", layers=[1])
    layers = supported_layers(model).items()
    changed = [index for index, (module, _) in layers if "forward" in module.__dict__]
    assert changed == [1]
    assert not torch.allclose(logits(model, IDS), reference)


def test_an_mcrnn_model_gets_the_spec():
    """mcrnn's own model: the retrofit sets its layers' spec; ``router="query"`` sets the router
    projection aside (u = q): the same logits as the model built with that spec and u = q."""
    torch.manual_seed(0)
    base = {"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2, "num_heads": 2}
    model = MCForCausalLM(MCConfig(**base)).eval()
    spec = {"segment_size": 4, "aggregation": "ssc", "ssc_top_k": 1}
    built = MCForCausalLM(MCConfig(**base, **spec, separate_router=False))
    built.load_state_dict(model.state_dict(), strict=False)
    reference = logits(model, IDS)
    add_memory_caching(model, segment_size=4, aggregation="ssc", top_k=1)
    torch.testing.assert_close(logits(model, IDS), logits(built.eval(), IDS), atol=0, rtol=0)
    with pytest.raises(ValueError, match="already has"):
        add_memory_caching(model)
    remove_memory_caching(model)
    assert torch.equal(logits(model, IDS), reference)
    with pytest.raises(ValueError, match="router='learned' is for transformers layers"):
        add_memory_caching(model, router="learned", aggregation="grm", segment_size=4)
