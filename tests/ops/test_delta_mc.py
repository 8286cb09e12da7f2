"""MC over the delta-rule memories (deltanet, gated_deltanet): the chunkwise path and the decode step
against the token-loop definition, the plain delta rule, exact overwrite, gates at their range edges
(float64, random inputs, awkward shapes, gradients of q, k, v, u, g and b)."""

from __future__ import annotations

import itertools

import pytest
import torch

from mcrnn.ops import memory_caching
from mcrnn.ops.memories import DeltaNet, memory_inputs

AGGREGATIONS = ("residual", "grm", "soup", "ssc", "average")
MEMORIES = ("deltanet", "gated_deltanet")
TOL = dict(atol=1e-10, rtol=1e-10)


def make_inputs(
    batch=2, seq_len=14, heads=2, key_dim=5, value_dim=3, seed=0, grad=False, memory="gated_deltanet"
):
    """Random float64 q, u, v, unit-norm keys (as the layer feeds them), beta in (0, 1) and, for
    gated_deltanet, log_decay < 0."""
    gen = torch.Generator().manual_seed(seed)
    inputs = {
        "q": torch.randn(batch, seq_len, heads, key_dim, generator=gen, dtype=torch.float64),
        "k": torch.nn.functional.normalize(
            torch.randn(batch, seq_len, heads, key_dim, generator=gen, dtype=torch.float64), dim=-1
        ),
        "v": torch.randn(batch, seq_len, heads, value_dim, generator=gen, dtype=torch.float64),
        "u": torch.randn(batch, seq_len, heads, key_dim, generator=gen, dtype=torch.float64),
        "beta": torch.rand(batch, seq_len, heads, generator=gen, dtype=torch.float64) * 0.9 + 0.05,
    }
    if memory == "gated_deltanet":
        inputs["log_decay"] = -torch.rand(batch, seq_len, heads, generator=gen, dtype=torch.float64) * 0.7
    return {name: x.requires_grad_(grad) for name, x in inputs.items()}


def run(inputs, memory, **options):
    q, k, v, u = (inputs[n] for n in "qkvu")
    gates = {n: inputs[n] for n in ("log_decay", "beta") if n in inputs}
    return memory_caching(q, k, v, u, memory=memory_inputs(memory, **gates), **options)


def assert_fast_matches_naive(inputs, memory, **options):
    """Outputs and the gradient of every input of the parallel path equal the token loop's."""
    cotangent = torch.randn(inputs["v"].shape[:3] + inputs["v"].shape[-1:], dtype=torch.float64)
    results = []
    for backend in ("torch", "naive"):
        out = run(inputs, memory, backend=backend, **options)
        grads = torch.autograd.grad(
            (out * cotangent).sum(), list(inputs.values()), allow_unused=True, materialize_grads=True
        )
        results.append((out, grads))
    (fast, fast_grads), (naive, naive_grads) = results
    torch.testing.assert_close(fast, naive, **TOL)
    for name, got, want in zip(inputs, fast_grads, naive_grads, strict=True):
        torch.testing.assert_close(got, want, **TOL, msg=lambda m, name=name: f"grad of {name}: {m}")


CASES = list(
    itertools.product(
        AGGREGATIONS,
        ("checkpoint", "independent"),
        MEMORIES,
        # one-token segments; segments of 4 in chunks of 4 with the last chunk padded; one segment in
        # two chunks of 7; a segment longer than T
        (1, 4, None, 40),
    )
)


@pytest.mark.parametrize("aggregation,init,memory,segment_size", CASES)
def test_parallel_matches_naive_outputs_and_gradients(aggregation, init, memory, segment_size):
    """T=14 (not a multiple of the chunk), Dk=5 != Dv=3, H=2; inner chunk capped at 8."""
    inputs = make_inputs(grad=True, memory=memory)
    options = dict(segment_size=segment_size, aggregation=aggregation, init=init, chunk_size=8)
    assert_fast_matches_naive(inputs, memory, **options, top_k=2 if aggregation == "ssc" else None)


@pytest.mark.parametrize("memory", MEMORIES)
def test_explicit_lengths_and_sum_pooling_match_naive(memory):
    inputs = make_inputs(seq_len=17, heads=3, grad=True, memory=memory)
    options = dict(segment_lengths=[3, 8, 2], aggregation="grm", pooling="sum", init="independent")
    assert_fast_matches_naive(inputs, memory, **options)


def delta_rule(q, k, v, beta, log_decay):
    """The plain (gated) delta rule, written out per head: S = a (S - b k (k^T S)) + b k v^T, o = q^T S."""
    batch, seq_len, heads, key_dim = q.shape
    out = torch.zeros(batch, seq_len, heads, v.shape[-1], dtype=q.dtype)
    for b, h in itertools.product(range(batch), range(heads)):
        state = torch.zeros(key_dim, v.shape[-1], dtype=q.dtype)
        for t in range(seq_len):
            key, strength = k[b, t, h], beta[b, t, h]
            decay = 1.0 if log_decay is None else log_decay[b, t, h].exp()
            state = (
                decay * (state - strength * key[:, None] * (key @ state))
                + strength * key[:, None] * v[b, t, h]
            )
            out[b, t, h] = q[b, t, h] @ state
    return out


@pytest.mark.parametrize("memory", MEMORIES)
def test_one_segment_is_the_plain_delta_rule(memory):
    """DESIGN.md §7.1: one segment gives exactly the base memory on the parallel path (T=70 in five
    chunks of 14, the chunk-to-chunk recurrence included)."""
    inputs = make_inputs(batch=1, seq_len=70, heads=2, key_dim=6, value_dim=4, memory=memory)
    want = delta_rule(inputs["q"], inputs["k"], inputs["v"], inputs["beta"], inputs.get("log_decay"))
    for options in ({}, {"segment_size": 70, "aggregation": "ssc", "top_k": 1}):
        torch.testing.assert_close(run(inputs, memory, chunk_size=32, **options), want, **TOL)


@pytest.mark.parametrize("backend", ["torch", "naive"])
def test_full_strength_with_orthonormal_keys_overwrites(backend):
    """b = 1 and a key seen before: the old value under that key is replaced exactly, the others kept."""
    eye = torch.eye(4, dtype=torch.float64)
    keys = eye[[0, 1, 0, 2, 1]]  # keys e0, e1, e0 (overwrite), e2, e1 (overwrite)
    values = torch.randn(5, 3, dtype=torch.float64)
    queries = eye[[0, 1, 0, 1, 0]]  # read back e0, e1, e0, e1, e0
    q, k, v = (x.view(1, 5, 1, -1) for x in (queries, keys, values))
    out = memory_caching(
        q, k, v, memory=DeltaNet(beta=torch.ones(1, 5, 1, dtype=torch.float64)), backend=backend
    )
    want = values[[0, 1, 2, 1, 2]]  # e0 -> v0, e1 -> v1, e0 -> v2 (not v0 + v2), e1 -> v1, e0 -> v2
    torch.testing.assert_close(out[0, :, 0], want, **TOL)


@pytest.mark.parametrize(
    "beta_value,decay_value",
    [(0.0, -0.3), (1.0, 0.0), (1.0, -40.0), (0.5, -1.0e4), ("mixed", "mixed")],
    ids=["b0", "b1-g0", "b1-g-40", "g-1e4", "mixed-edges"],
)
def test_gates_at_range_edges_match_naive(beta_value, decay_value):
    """b in {0, 1}, g in {0, very negative}: fast == naive, outputs and gradients finite."""
    inputs = make_inputs(seq_len=11, memory="gated_deltanet")
    shape = inputs["beta"].shape
    if beta_value == "mixed":
        gen = torch.Generator().manual_seed(1)
        inputs["beta"] = torch.randint(0, 2, shape, generator=gen).to(torch.float64)
        inputs["log_decay"] = torch.tensor([0.0, -50.0, -1e3])[
            torch.randint(0, 3, shape, generator=gen)
        ].double()
    else:
        inputs["beta"] = torch.full(shape, beta_value, dtype=torch.float64)
        inputs["log_decay"] = torch.full(shape, decay_value, dtype=torch.float64)
    inputs = {name: x.detach().requires_grad_() for name, x in inputs.items()}
    options = dict(segment_size=3, aggregation="grm", chunk_size=4)
    assert_fast_matches_naive(inputs, "gated_deltanet", **options)
    out = run(inputs, "gated_deltanet", **options)
    grads = torch.autograd.grad(out.sum(), list(inputs.values()), allow_unused=True, materialize_grads=True)
    assert all(bool(g.isfinite().all()) for g in grads)
    if beta_value == 0.0:  # nothing is ever written
        assert bool((out == 0).all())


@pytest.mark.parametrize("memory", MEMORIES)
def test_soup_equals_grm(memory):
    inputs = make_inputs(memory=memory)
    grm, soup = (run(inputs, memory, segment_size=3, aggregation=a) for a in ("grm", "soup"))
    torch.testing.assert_close(soup, grm, atol=0, rtol=0)


@pytest.mark.parametrize(
    "memory,init,aggregation",
    [
        ("gated_deltanet", "checkpoint", "grm"),
        ("gated_deltanet", "independent", "ssc"),
        ("deltanet", "independent", "residual"),
        ("deltanet", "checkpoint", "average"),
    ],
)
@pytest.mark.parametrize("prefill", [1, 4, 7])
def test_prefill_then_decode_matches_the_full_parallel_pass(memory, init, aggregation, prefill):
    """DESIGN.md §7.7: the decode step (prefill at, before and after a segment boundary) equals the
    parallel forward token for token, and the final caches agree."""
    inputs = make_inputs(seq_len=13, memory=memory)
    options = dict(
        segment_size=4, init=init, aggregation=aggregation, top_k=1 if aggregation == "ssc" else None
    )
    full, full_cache = run(inputs, memory, output_cache=True, **options)
    head = {name: x[:, :prefill] for name, x in inputs.items()}
    out, cache = run(head, memory, output_cache=True, **options)
    outs = [out]
    for t in range(prefill, 13):
        step = {name: x[:, t : t + 1] for name, x in inputs.items()}
        out, cache = run(step, memory, cache=cache, output_cache=True)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=1), full, **TOL)
    torch.testing.assert_close(cache.online, full_cache.online, **TOL)
    torch.testing.assert_close(cache.cached, full_cache.cached, **TOL)
    assert cache.memory == memory and cache.position == 13


@pytest.mark.parametrize("memory", MEMORIES)
@pytest.mark.parametrize("aggregation", ["grm", "ssc", "residual"])
def test_log_segmentation_matches_naive_and_decodes(memory, aggregation):
    """Fenwick buckets (checkpoint): the parallel path equals the token loop (outputs and gradients,
    T=21 over chunks of 8), and a prefill of 6 tokens then decoding equals the parallel pass."""
    inputs = make_inputs(seq_len=21, grad=True, memory=memory)
    options = dict(segmentation="log", aggregation=aggregation, top_k=2 if aggregation == "ssc" else None)
    assert_fast_matches_naive(inputs, memory, chunk_size=8, **options)
    inputs = {name: x.detach() for name, x in inputs.items()}
    full = run(inputs, memory, **options)
    out, cache = run({name: x[:, :6] for name, x in inputs.items()}, memory, output_cache=True, **options)
    outs = [out]
    for t in range(6, 21):
        out, cache = run(
            {name: x[:, t : t + 1] for name, x in inputs.items()}, memory, cache=cache, output_cache=True
        )
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=1), full, **TOL)


@pytest.mark.parametrize("segmentation", [{"segment_size": 4}, {"segmentation": "log"}])
def test_a_cache_decodes_only_its_own_memory(segmentation):
    """A linear cache fed to a delta-rule call (or back) is an error, not a silent linear write."""
    inputs = make_inputs(seq_len=5)
    q, k, v = (inputs[n] for n in "qkv")
    _, linear_cache = memory_caching(q, k, v, output_cache=True, **segmentation)
    _, delta_cache = run(inputs, "gated_deltanet", output_cache=True, **segmentation)
    step = {name: x[:, :1] for name, x in inputs.items()}
    with pytest.raises(ValueError, match="the cache is for memory='linear'"):
        run(step, "gated_deltanet", cache=linear_cache)
    with pytest.raises(ValueError, match="the cache is for memory='gated_deltanet'"):
        memory_caching(q[:, :1], k[:, :1], v[:, :1], cache=delta_cache)


def test_float32_fast_path_against_float64_definition():
    """Float32 inputs (float32 states) stay within a bound of the float64 definition (measured 1.9e-6
    here; 7e-6 at D=64, T=2048 with outputs up to 10)."""
    inputs = make_inputs(batch=1, seq_len=200, heads=2, key_dim=16, value_dim=16)
    want = run(inputs, "gated_deltanet", segment_size=64, aggregation="grm", backend="naive")
    got = run({n: x.float() for n, x in inputs.items()}, "gated_deltanet", segment_size=64, aggregation="grm")
    assert got.dtype == torch.float32
    assert (got.double() - want).abs().max().item() < 1e-5


@pytest.mark.parametrize(
    "memory,gates,message",
    [
        ("deltanet", {}, "needs ['beta']"),
        ("gated_deltanet", {"beta": 0.5}, "needs ['log_decay']"),
        ("deltanet", {"beta": 0.5, "log_decay": -0.1}, "takes ('beta',), not ['log_decay']"),
        ("deltanet", {"beta": 1.5}, "beta must be finite and in [0, 1]"),
        ("gated_deltanet", {"beta": 0.5, "log_decay": 0.2}, "log_decay must be finite and <= 0"),
    ],
)
def test_bad_inputs_are_named(memory, gates, message):
    q = torch.randn(1, 5, 2, 4)
    full = {name: torch.full((1, 5, 2), value) for name, value in gates.items()}
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        memory_caching(q, q, q, memory=memory_inputs(memory, **full))


@pytest.mark.parametrize(
    "options,message",
    [
        ({"segmentation": "log", "init": "independent"}, "supports init='checkpoint' only"),
        ({"backend": "triton"}, "linear and swla"),
    ],
)
def test_unsupported_options_are_rejected(options, message):
    q = torch.randn(1, 5, 2, 4)
    with pytest.raises(ValueError, match=message):
        memory_caching(q, q, q, memory=DeltaNet(beta=torch.full((1, 5, 2), 0.5)), **options)
