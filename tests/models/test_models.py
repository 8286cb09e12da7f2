import importlib

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

import mcrnn  # noqa: F401  (registers the Auto classes)
from mcrnn.models import MCCache, MCConfig, MCForCausalLM, MCModel


def _has_mc_layer() -> bool:
    try:
        return hasattr(importlib.import_module("mcrnn.layers"), "MemoryCachingAttention")
    except ImportError:
        return False


needs_mc = pytest.mark.skipif(not _has_mc_layer(), reason="mcrnn.layers.MemoryCachingAttention not available")

TINY = {"vocab_size": 37, "hidden_size": 32, "num_hidden_layers": 2, "num_heads": 2, "chunk_size": 4}
MIXERS = {
    "attention": {"mixer": "attention"},
    "base": {"segment_size": None},
    "grm": {"segment_size": 4, "aggregation": "grm"},
    "ssc": {"segment_size": 4, "aggregation": "ssc", "ssc_top_k": 1},
    "swla_residual_independent": {
        "memory": "swla",
        "segment_size": 8,
        "aggregation": "residual",
        "init": "independent",
    },
    "hybrid": {"segment_size": 4, "layer_mixers": ["mc", "attention"]},
    "titans_grm": {"memory": "titans", "segment_size": 8, "aggregation": "grm", "memory_expansion": 2},
    "dla_soup_independent": {
        "memory": "dla",
        "segment_size": 8,
        "aggregation": "soup",
        "init": "independent",
        "memory_expansion": 2,
    },
}


def _params(name):
    marks = [] if name == "attention" else [needs_mc]
    return pytest.param(name, marks=marks, id=name)


def _model(name, **extra):
    torch.manual_seed(0)
    return MCForCausalLM(MCConfig(**TINY, **MIXERS[name], **extra)).eval()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"memory": "gru"}, "memory"),
        ({"aggregation": "max"}, "aggregation"),
        ({"hidden_size": 30, "num_heads": 4}, "hidden_size"),
        ({"memory": "dla", "segment_size": 48, "chunk_size": 32}, "segment_size"),
        ({"aggregation": "ssc"}, "top_k"),
        ({"layer_mixers": ["mc"]}, "layer_mixers"),
        ({"layer_mixers": ["mc", "rnn"]}, "layer_mixers"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"init": "zeros"}, "init"),
    ],
)
def test_config_validation_names_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        MCConfig(**{**TINY, **kwargs})


def test_config_defaults_and_auto_registration(tmp_path):
    cfg = MCConfig()
    assert cfg.model_type == "mcrnn" and cfg.intermediate_size % 32 == 0
    cfg.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, MCConfig)
    assert {k: v for k, v in loaded.to_dict().items() if k != "_name_or_path"} == {
        k: v for k, v in cfg.to_dict().items() if k != "_name_or_path"
    }
    small = MCConfig(**TINY, mixer="attention")
    assert isinstance(AutoModel.from_config(small), MCModel)
    assert isinstance(AutoModelForCausalLM.from_config(small), MCForCausalLM)


@pytest.mark.parametrize("name", [_params(n) for n in MIXERS])
def test_forward_loss_backward(name):
    model = _model(name).train()
    ids = torch.randint(0, 37, (2, 16))
    out = model(ids, labels=ids)
    assert out.logits.shape == (2, 16, 37) and torch.isfinite(out.loss)
    assert out.cache is None  # no cache is built while training unless asked for
    out.loss.backward()
    unused = "u_proj" if model.config.aggregation in ("residual", "average") else None  # no router
    assert all(p.grad is not None for n, p in model.named_parameters() if unused is None or unused not in n)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied by default


@pytest.mark.parametrize("name", [_params(n) for n in MIXERS])
def test_generate_matches_uncached_greedy(name):
    model = _model(name)
    prompt = torch.randint(1, 37, (2, 7))  # no pad id (0): generate would infer left padding
    lengths = []
    hook = model.model.register_forward_pre_hook(
        lambda _m, _a, kw: lengths.append(kw["input_ids"].shape[1]), with_kwargs=True
    )
    generated = model.generate(prompt, max_new_tokens=10, do_sample=False, pad_token_id=0)
    hook.remove()
    assert lengths[0] == 7 and set(lengths[1:]) == {1}  # decoding really runs on the cache
    ids = prompt
    with torch.no_grad():
        for _ in range(10):
            nxt = model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
    assert torch.equal(generated, ids)


@pytest.mark.parametrize("name", [_params(n) for n in MIXERS])
def test_chunked_prefill_with_cache_matches_full_forward(name):
    model = _model(name)
    ids = torch.randint(0, 37, (2, 12))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        first = model(ids[:, :5], use_cache=True)
        assert isinstance(first.cache, MCCache) and first.cache.get_seq_length() == 5
        rest = model(ids[:, 5:], cache=first.cache, use_cache=True).logits
    torch.testing.assert_close(torch.cat([first.logits, rest], dim=1), full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", [_params(n) for n in ("attention", "grm", "titans_grm")])
def test_right_padding_does_not_change_real_positions(name):
    model = _model(name)
    ids = torch.randint(0, 37, (1, 10))  # 10 real tokens end mid-chunk and mid-segment
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 10), torch.zeros(1, 3)], dim=1).long()
    with torch.no_grad():
        torch.testing.assert_close(model(padded, attention_mask=mask).logits[:, :10], model(ids).logits)


def test_out_of_vocab_ids_rejected():
    with pytest.raises(ValueError, match="vocab_size"):
        _model("attention")(torch.tensor([[1, 37]]))
