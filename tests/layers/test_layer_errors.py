"""Bad input to the layer and the model gets one clear error naming the argument."""

from __future__ import annotations

import re

import pytest
import torch

from mcrnn.layers import MemoryCachingAttention
from mcrnn.layers.attention import Attention
from mcrnn.models import MCConfig, MCForCausalLM


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hidden_size": 32.0}, "hidden_size must be an int >= 1, got 32.0"),
        ({"num_heads": 0}, "num_heads must be an int >= 1, got 0"),
        ({"conv_size": -1}, "conv_size must be an int >= 0"),
        ({"chunk_size": 0}, "chunk_size must be an int >= 1, got 0"),
        ({"segment_lengths": [0, 64]}, "segment_lengths must be a non-empty list of ints >= 1"),
        ({"hidden_size": 30}, "hidden_size=30 must be divisible by num_heads=4"),
        ({"memory": "dla", "memory_depth": 0}, "memory_depth must be an int >= 1, got 0"),
    ],
)
def test_bad_construction_fails_at_once(kwargs: dict, message: str) -> None:
    options = {"hidden_size": 32, "num_heads": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        MemoryCachingAttention(options.pop("hidden_size"), options.pop("num_heads"), **options)


def test_bad_calls() -> None:
    layer = MemoryCachingAttention(16, 2, segment_size=4)
    with pytest.raises(ValueError, match=r"x must be \[B, T, 16\] with B, T >= 1, got \(0, 5, 16\)"):
        layer(torch.randn(0, 5, 16))
    with pytest.raises(ValueError, match=r"got \(2, 0, 16\)"):
        layer(torch.randn(2, 0, 16))
    _, attention_cache = Attention(16, 2)(torch.randn(2, 3, 16), use_cache=True)
    with pytest.raises(
        TypeError, match="cache must be the LayerCache this layer returned, got AttentionCache"
    ):
        layer(torch.randn(2, 1, 16), cache=attention_cache)
    _, cache = layer(torch.randn(2, 3, 16), use_cache=True)
    with pytest.raises(ValueError, match=r"cache was built for \(B, H, Dk, Dv\)=\(2, 2, 8, 8\)"):
        layer(torch.randn(3, 1, 16), cache=cache)
    with pytest.raises(ValueError, match=r"cache was built for \(B, H, Dk, Dv\)=\(2, 2, 8, 8\)"):
        MemoryCachingAttention(32, 2, segment_size=4)(torch.randn(2, 1, 32), cache=cache)


def test_model_names_bad_input_ids() -> None:
    model = MCForCausalLM(MCConfig(vocab_size=11, hidden_size=16, num_hidden_layers=1, num_heads=2))
    with pytest.raises(ValueError, match=r"input_ids must be \[B, T\] with B, T >= 1, got shape \(5,\)"):
        model(torch.arange(5))
    with pytest.raises(ValueError, match=r"input_ids must be \[B, T\] with B, T >= 1, got shape \(1, 0\)"):
        model(torch.zeros(1, 0, dtype=torch.long))


@pytest.mark.parametrize(
    "options",
    [
        {"memory": "swla", "segment_size": 4, "aggregation": "ssc", "top_k": 1},
        {"segmentation": "log", "aggregation": "grm"},
        {"memory": "titans", "segment_size": 4, "chunk_size": 4, "aggregation": "soup"},
    ],
)
def test_runs_under_bf16_autocast(options: dict) -> None:
    """An enclosing autocast does not lower the op's accumulation (swla + ssc failed with a dtype
    mismatch in the selected read)."""
    torch.manual_seed(0)
    layer = MemoryCachingAttention(32, 2, **options)
    x = torch.randn(2, 16, 32)
    reference, _ = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = layer(x)
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16
    # measured: max error 4.7e-3 to 6.7e-3 for outputs of max 0.66 to 0.85 (bf16 projections)
    torch.testing.assert_close(y.float(), reference, atol=2e-2, rtol=0)


@pytest.mark.parametrize(
    "make",
    [lambda: MemoryCachingAttention(16, 2, segment_size=4), lambda: Attention(16, 2)],
    ids=["mc", "attn"],
)
def test_input_dtype_other_than_the_parameters_is_named(make) -> None:
    layer = make()
    for dtype in (torch.float64, torch.bfloat16):
        with pytest.raises(
            TypeError, match=rf"x has dtype {dtype} but the layer's parameters are torch.float32"
        ):
            layer(torch.randn(2, 5, 16, dtype=dtype))


def test_wrong_length_attention_mask_is_named() -> None:
    """The attention mixer broadcast a short mask into a raw torch error; the model dropped an all-ones mask
    of any shape without a word."""
    layer = Attention(16, 2)
    x = torch.randn(2, 6, 16)
    with pytest.raises(ValueError, match=r"attention_mask must be \[B, T\]=\(2, 6\) .* got \(2, 4\)"):
        layer(x, attention_mask=torch.ones(2, 4))
    _, cache = layer(x, use_cache=True)
    with pytest.raises(ValueError, match=r"\[B, T_past \+ T\]=\(2, 7\) .* got \(2, 5\)"):
        layer(x[:, :1], attention_mask=torch.ones(2, 5), cache=cache)
    layer(x[:, :1], attention_mask=torch.ones(2, 7), cache=cache)  # generate's convention: the whole stream
    layer(x[:, :1], attention_mask=torch.ones(2, 1), cache=cache)
    config = MCConfig(vocab_size=11, hidden_size=16, num_hidden_layers=1, num_heads=2, mixer="attention")
    model = MCForCausalLM(config).eval()
    ids = torch.randint(0, 11, (2, 6))
    for shape in [(2, 4), (3, 6), (6,), (2, 9)]:
        with pytest.raises(ValueError, match="attention_mask must be .* got " + re.escape(str(shape))):
            model(ids, attention_mask=torch.ones(shape, dtype=torch.long))
    out = model(ids, attention_mask=torch.ones(2, 6, dtype=torch.long), use_cache=True)
    model(ids[:, :1], attention_mask=torch.ones(2, 7, dtype=torch.long), cache=out.cache)


def test_float_indices_to_reorder_are_refused() -> None:
    """``torch.as_tensor(indices, dtype=torch.long)`` truncated 1.7 to row 1 without a word."""
    x = torch.randn(2, 5, 16)
    _, layer_cache = MemoryCachingAttention(16, 2, segment_size=4)(x, use_cache=True)
    _, attention_cache = Attention(16, 2)(x, use_cache=True)
    _, row_caches = MemoryCachingAttention(16, 2, segment_size=4)(
        x, attention_mask=torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]]), use_cache=True
    )
    for cache in (layer_cache, layer_cache.op, attention_cache, row_caches):
        for indices in (torch.tensor([1.7, 0.2]), [1.0, 0.0]):
            with pytest.raises(
                TypeError, match="indices must be integers \\(batch rows\\), got dtype torch.float32"
            ):
                cache.reorder(indices)
        assert cache.reorder(torch.tensor([1, 0])) is not None and cache.reorder([1]) is not None
