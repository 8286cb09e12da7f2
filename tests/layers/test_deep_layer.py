"""MemoryCachingAttention with deep memories (dla, titans): decoding, training, scale, bad input."""

from __future__ import annotations

import pytest
import torch

from mcrnn.layers import MemoryCachingAttention
from mcrnn.layers.deep_memory import DeepMemory
from mcrnn.ops import memory_caching
from mcrnn.ops.memories import memory_inputs


def make_layer(memory: str, aggregation: str = "grm", **kwargs) -> MemoryCachingAttention:
    torch.manual_seed(0)
    options = dict(
        memory=memory, aggregation=aggregation, segment_size=8, chunk_size=4, top_k=1, memory_expansion=2
    )
    return MemoryCachingAttention(16, 2, **{**options, **kwargs})


@pytest.mark.parametrize("memory", ["dla", "titans"])
@pytest.mark.parametrize(
    "aggregation,init", [("grm", "checkpoint"), ("soup", "independent"), ("ssc", "checkpoint")]
)
def test_decoding_equals_parallel(memory: str, aggregation: str, init: str) -> None:
    layer = make_layer(memory, aggregation, init=init).double()
    x = torch.randn(2, 19, 16, dtype=torch.float64)
    full, _ = layer(x)
    out, cache = layer(x[:, :6], use_cache=True)
    outs = [out]
    for t in range(6, 19):
        out, cache = layer(x[:, t : t + 1], cache=cache, use_cache=True)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("memory", ["dla", "titans"])
def test_training_makes_the_memory_read_depend_on_the_query(memory: str) -> None:
    layer = make_layer(memory, segment_size=None)
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-2)
    x, target = torch.randn(4, 16, 16), torch.randn(4, 16, 16)
    before = [w.detach().clone() for w in layer.deep.weights]
    for _ in range(5):
        optimizer.zero_grad()
        loss = (layer(x)[0] - target).pow(2).mean()
        loss.backward()
        assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in layer.deep.weights)
        optimizer.step()
    assert all(not torch.equal(w, w0) for w, w0 in zip(layer.deep.weights, before, strict=True))
    # read the trained memory after a fixed context with two queries; the residual part of f
    # (f(q) = q + MLP(q)) is removed, so what is compared is the learned map only
    q, k, v = (torch.nn.functional.normalize(torch.randn(1, 9, 2, 8), dim=-1) for _ in range(3))
    _, options = layer.deep(x[:1, :9], v)
    reads = []
    for _ in range(2):
        q = q.clone()
        q[:, -1] = torch.nn.functional.normalize(torch.randn(1, 2, 8), dim=-1)
        out = memory_caching(q, k, v, memory=memory_inputs(memory, **options), chunk_size=4)
        reads.append(out[:, -1] - q[:, -1])
    assert (reads[0] - reads[1]).norm() > 1e-2 * reads[0].norm()


@pytest.mark.parametrize("memory", ["dla", "titans"])
@pytest.mark.parametrize("aggregation", ["grm", "soup"])
def test_finite_for_inputs_of_norm_1e3(memory: str, aggregation: str) -> None:
    layer = make_layer(memory, aggregation, segment_size=32, chunk_size=16)
    x = 1e3 * torch.nn.functional.normalize(torch.randn(2, 128, 16), dim=-1)
    y, cache = layer(x, use_cache=True)
    assert y.isfinite().all()
    assert all(w.isfinite().all() for w in cache.op.weights)
    y.sum().backward()
    assert all(p.grad is None or p.grad.isfinite().all() for p in layer.parameters())


def test_nan_in_gives_nan_out() -> None:
    layer = make_layer("titans")
    x = torch.randn(2, 12, 16)
    x[0, 5, 3] = float("nan")
    y, _ = layer(x)
    # NaN reaches the outputs from its own inner chunk (tokens 4..7) on; earlier chunks and other rows
    # are untouched (inside a chunk the masked matmuls multiply it by 0, which stays NaN)
    assert y[0, 5:].isnan().all() and not y[1].isnan().any() and not y[0, :4].isnan().any()


def test_padding_keeps_real_outputs() -> None:
    layer = make_layer("titans").double()
    x = torch.randn(1, 12, 16, dtype=torch.float64)
    mask = torch.ones(1, 12)
    mask[:, 9:] = 0
    padded, _ = layer(x, attention_mask=mask)
    torch.testing.assert_close(padded[:, :9], layer(x[:, :9])[0])


def test_bad_construction() -> None:
    with pytest.raises(ValueError, match="segment_size"):
        make_layer("dla", segment_size=6)
    with pytest.raises(ValueError, match="segment_lengths"):
        make_layer("dla", segment_size=None, segment_lengths=[6, 8])
    with pytest.raises(ValueError, match="chunk_size"):
        make_layer("titans", chunk_size=0)
    with pytest.raises(ValueError, match="expansion"):
        make_layer("titans", memory_expansion=0)
    with pytest.raises(ValueError, match="depth"):
        make_layer("titans", memory_depth=0)
    with pytest.raises(ValueError, match="memory"):
        DeepMemory(16, 2, 8, memory="linear")


def test_depth_one_layer_runs() -> None:
    layer = make_layer("dla", memory_depth=1)
    assert [tuple(w.shape) for w in layer.deep.weights] == [(2, 8, 8)]
    assert layer(torch.randn(1, 10, 16))[0].shape == (1, 10, 16)
