"""The MC layer over the delta-rule memories: its beta projection, decoding equals the parallel
forward, right padding writes nothing."""

from __future__ import annotations

import pytest
import torch

from mcrnn.layers import MemoryCachingAttention

TOL = dict(atol=1e-10, rtol=1e-10)


def delta_layer(memory: str, **options) -> MemoryCachingAttention:
    torch.manual_seed(0)
    return MemoryCachingAttention(32, 4, memory=memory, **{"segment_size": 3, **options}).double()


def hidden(batch: int = 2, seq_len: int = 11) -> torch.Tensor:
    return torch.randn(batch, seq_len, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("memory", ["deltanet", "gated_deltanet"])
def test_projections_and_gradients(memory):
    """A beta projection for both; a decay projection only for gated_deltanet (use_decay is moot)."""
    layer = delta_layer(memory, use_decay=False)
    assert layer.beta_proj is not None
    assert (layer.decay_proj is not None) == (memory == "gated_deltanet")
    x = hidden().requires_grad_()
    layer(x)[0].square().mean().backward()
    assert all(p.grad is not None and bool(p.grad.isfinite().all()) for p in layer.parameters())


@pytest.mark.parametrize(
    "memory,options",
    [
        ("gated_deltanet", {"aggregation": "grm"}),
        ("deltanet", {"aggregation": "ssc", "top_k": 1, "init": "independent"}),
        ("gated_deltanet", {"aggregation": "grm", "segment_size": None, "segmentation": "log"}),
    ],
)
def test_decoding_equals_parallel(memory, options):
    layer = delta_layer(memory, **options)
    x = hidden()
    expected, _ = layer(x)
    out, cache = layer(x[:, :4], use_cache=True)
    outputs = [out]
    for t in range(4, x.shape[1]):
        out, cache = layer(x[:, t : t + 1], cache=cache, use_cache=True)
        outputs.append(out)
    torch.testing.assert_close(torch.cat(outputs, 1), expected, **TOL)


def test_right_padding_writes_nothing():
    layer = delta_layer("gated_deltanet", aggregation="grm")
    x = hidden()
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, 6:] = 0
    padded, cache = layer(x, attention_mask=mask, use_cache=True)
    alone, cache_alone = layer(x[1:, :6], use_cache=True)
    torch.testing.assert_close(padded[1, :6], alone[0], **TOL)
    torch.testing.assert_close(cache.op.online[1], cache_alone.op.online[0], **TOL)
