"""Fenwick (log) segmentation, DESIGN.md §5: parallel and decoding paths against the token loop."""

from __future__ import annotations

import itertools

import pytest
import torch

from mcrnn.ops import memory_caching
from mcrnn.ops.linear import chunk as linear_chunk
from mcrnn.ops.memories import SWLA, Linear
from mcrnn.ops.read import log as log_chunk
from mcrnn.ops.read.fenwick import fenwick_buckets

TOL = dict(atol=1e-10, rtol=1e-10)


def inputs(seq_len=21, seed=0, grad=False, decay=True):
    gen = torch.Generator().manual_seed(seed)
    shapes = {"q": 3, "k": 3, "v": 4, "u": 3}
    out = {n: torch.randn(2, seq_len, 2, d, generator=gen, dtype=torch.float64) for n, d in shapes.items()}
    out["log_decay"] = -torch.rand(2, seq_len, 2, generator=gen, dtype=torch.float64) if decay else None
    return {n: (x.requires_grad_(grad) if x is not None else None) for n, x in out.items()}


def run(x, **options):
    return memory_caching(
        x["q"], x["k"], x["v"], x["u"], memory=Linear(x["log_decay"]), segmentation="log", **options
    )


def test_buckets_follow_binary_digits():
    assert fenwick_buckets(37) == [(0, 32), (32, 36), (36, 37)]
    assert fenwick_buckets(32) == [(0, 32)]
    assert fenwick_buckets(1) == [(0, 1)]
    for length in range(1, 70):
        buckets = fenwick_buckets(length)
        assert len(buckets) == bin(length).count("1") and buckets[-1][1] == length


CASES = list(
    itertools.product(["residual", "grm", "ssc", "average"], ["checkpoint", "independent"], [True, False])
)


@pytest.mark.parametrize("aggregation,init,decay", CASES)
@pytest.mark.parametrize("chunk_size", [1, 4, 64])
def test_parallel_matches_naive(aggregation, init, decay, chunk_size):
    x = inputs(grad=True, decay=decay)
    options = dict(aggregation=aggregation, init=init, top_k=1 if aggregation == "ssc" else None)
    reference = run(x, backend="naive", **options)
    fast = run(x, backend="torch", chunk_size=chunk_size, **options)
    torch.testing.assert_close(fast, reference, **TOL)
    leaves = [t for t in x.values() if t is not None]
    weight = torch.randn_like(fast)
    expected = torch.autograd.grad(
        (reference * weight).sum(), leaves, allow_unused=True, materialize_grads=True
    )
    got = torch.autograd.grad((fast * weight).sum(), leaves, allow_unused=True, materialize_grads=True)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, **TOL)


def assert_matches_naive(x, **options):
    """Fast path == token loop in float64: outputs and the gradients of every input."""
    reference = run(x, backend="naive", **options)
    fast = run(x, backend="torch", **options)
    torch.testing.assert_close(fast, reference, **TOL)
    leaves = [t for t in x.values() if t is not None]
    weight = torch.randn_like(fast)
    expected = torch.autograd.grad(
        (reference * weight).sum(), leaves, allow_unused=True, materialize_grads=True
    )
    got = torch.autograd.grad((fast * weight).sum(), leaves, allow_unused=True, materialize_grads=True)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("aggregation,init,decay", CASES)
def test_many_state_levels_in_blocks_match_naive(monkeypatch, aggregation, init, decay):
    """T = 77 (not a power of two) in chunks of 4: levels 2..6 are state levels, read in GEMMs of at most
    8 reader tokens, so whole-window runs, several runs per level and a cut last window all occur."""
    monkeypatch.setattr(log_chunk, "READ_BLOCK_TOKENS", 8)
    x = inputs(seq_len=77, seed=3, grad=True, decay=decay)
    top_k = 2 if aggregation == "ssc" else None
    assert_matches_naive(x, aggregation=aggregation, init=init, top_k=top_k, chunk_size=4)


@pytest.mark.parametrize("init", ["checkpoint", "independent"])
def test_router_query_defaults_to_q(init):
    """u=None routes with q (the parallel path then reuses q's chunks for the router logits)."""
    x = inputs(seq_len=45, seed=4, grad=True)
    x["u"] = None
    assert_matches_naive(x, aggregation="grm", init=init, chunk_size=8)


def test_state_level_read_gradcheck(monkeypatch):
    """The custom Function's analytic gradients (q, gates, sources) against finite differences: two
    levels of 2-token chunks and the entering window, runs of 4 reader tokens, T = 13."""
    monkeypatch.setattr(log_chunk, "READ_BLOCK_TOKENS", 4)
    gen = torch.Generator().manual_seed(5)
    seq_len, n_sources = 13, 7
    q = torch.randn(1, 2, seq_len, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    gates = torch.rand(1, 2, seq_len, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    sources = torch.randn(1, 2, n_sources, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    levels = [
        ((1, 2, 4), torch.tensor([0, 2, 4, 6])),  # level 1 over chunks of 2: pairs of one-chunk blocks
        ((3, 4, 8), torch.tensor([1, 3])),  # level 2
        ((2, 2, 2), torch.arange(6)),  # tokens of chunk m + 1 read state m
    ]

    def read(q, gates, sources):
        return log_chunk._StateLevelRead.apply(q, gates, sources, levels)

    assert torch.autograd.gradcheck(read, (q, gates, sources))


def test_weighted_attention_gradcheck():
    gen = torch.Generator().manual_seed(6)
    scores, mix = (torch.randn(1, 2, 3, 4, 4, generator=gen, dtype=torch.float64) for _ in range(2))
    v = torch.randn(1, 2, 3, 4, 5, generator=gen, dtype=torch.float64)
    tensors = tuple(t.requires_grad_() for t in (scores, mix, v))
    assert torch.autograd.gradcheck(linear_chunk._WeightedAttention.apply, tensors)


@pytest.mark.parametrize("aggregation,init,decay", CASES)
@pytest.mark.parametrize("prefill", [1, 6, 8])
def test_decoding_equals_parallel(aggregation, init, decay, prefill):
    x = inputs(decay=decay)
    options = dict(aggregation=aggregation, init=init, top_k=1 if aggregation == "ssc" else None)
    expected = run(x, **options)
    head = {n: (t[:, :prefill] if t is not None else None) for n, t in x.items()}
    out, cache = run(head, output_cache=True, **options)
    outputs = [out]
    for t in range(prefill, 21):
        step = {n: (v[:, t : t + 1] if v is not None else None) for n, v in x.items()}
        out, cache = run(step, cache=cache, output_cache=True, **options)
        outputs.append(out)
    torch.testing.assert_close(torch.cat(outputs, 1), expected, **TOL)
    assert cache.position == 21 and cache.num_cached == 2  # 21 = 16 + 4 + 1


def test_prefix_outputs_do_not_depend_on_later_tokens():
    """The partition is per token, so a prefix's outputs never change when the sequence grows."""
    x = inputs(seq_len=30, decay=False)
    full = run(x, aggregation="grm")
    prefix = run({n: (t[:, :19] if t is not None else None) for n, t in x.items()}, aggregation="grm")
    torch.testing.assert_close(full[:, :19], prefix, **TOL)


def test_log_differs_from_constant_segments():
    x = inputs(seq_len=16)
    constant = memory_caching(x["q"], x["k"], x["v"], x["u"], segment_size=4, memory=Linear(x["log_decay"]))
    assert not torch.allclose(run(x), constant)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"segment_size": 4}, "segmentation='log' takes no"),
        ({"memory": "swla", "init": "independent"}, "supports init='checkpoint' only"),
        ({"segmentation": "fenwick"}, "segmentation must be one of"),
    ],
)
def test_bad_log_options(kwargs, match):
    q = torch.randn(1, 4, 1, 2)
    options = {"segmentation": "log", **kwargs}
    if options.get("memory") == "swla":
        options["memory"] = SWLA(prev_gate=torch.rand(1, 4, 1), cur_gate=torch.rand(1, 4, 1))
    with pytest.raises(ValueError, match=match):
        memory_caching(q, q, q, **options)
