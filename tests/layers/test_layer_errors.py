"""Bad input to the layer and the model gets one clear error naming the argument."""

from __future__ import annotations

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
