"""MC over the ``kda`` memory (Kimi Delta Attention: the delta rule after a per-channel decay): one
segment is a plain KDA token loop written here (fla's ``naive_recurrent_kda`` convention, no ``q`` scale),
the chunkwise UT path equals the token-loop definition for every aggregation, init and segmentation
(outputs and gradients, float64), decoding equals the parallel pass, gates at their range ends, causality
of NaN, float32 against float64."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from mcrnn.ops import FenwickMemoryCache, MatrixMemoryCache, MCSpec, memory_caching
from mcrnn.ops.kda import chunk_kda_mc, naive_kda_mc, recurrent_kda_mc
from mcrnn.ops.memories import KDA

AGGREGATIONS = ("residual", "grm", "soup", "ssc", "average")
INITS = ("checkpoint", "independent")
TOL = dict(atol=1e-10, rtol=1e-10)
#: float32 path against the float64 definition, unit-norm keys, T <= 64 (measured: 8e-7 abs, 2e-7 of max |o|)
FLOAT32_TOL = dict(atol=1e-4, rtol=1e-4)
SEGMENTATIONS = {
    "none": {},
    "constant4": {"segment_size": 4},
    "one_token": {"segment_size": 1},
    "explicit": {"segment_lengths": (3, 1, 6, 2)},
    "log": {"segmentation": "log"},
}
NAMES = ("q", "k", "v", "u", "log_decay", "beta")


def make_inputs(batch=2, seq_len=13, heads=2, key_dim=5, value_dim=3, seed=0, strength=1.0):
    """Random float64 q, v, u, unit-norm keys (as the layer feeds them), per-channel log decays in
    [-strength, 0] and beta in (0.05, 0.95)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, seq_len, heads)
    return {
        "q": torch.randn(*shape, key_dim, generator=gen, dtype=torch.float64),
        "k": torch.nn.functional.normalize(
            torch.randn(*shape, key_dim, generator=gen, dtype=torch.float64), dim=-1
        ),
        "v": torch.randn(*shape, value_dim, generator=gen, dtype=torch.float64),
        "u": torch.randn(*shape, key_dim, generator=gen, dtype=torch.float64),
        "log_decay": -strength * torch.rand(*shape, key_dim, generator=gen, dtype=torch.float64),
        "beta": torch.rand(*shape, generator=gen, dtype=torch.float64) * 0.9 + 0.05,
    }


def plain_kda(q, k, v, log_decay, beta):
    """KDA per head, fla's ``naive_recurrent_kda`` without its scale: ``S = diag(exp(g_t)) S``,
    ``S = S + b_t k_t (v_t - S^T k_t)^T``, ``o_t = q_t^T S``."""
    batch, seq_len, heads, key_dim = q.shape
    out = torch.zeros(batch, seq_len, heads, v.shape[-1], dtype=q.dtype)
    for b, h in itertools.product(range(batch), range(heads)):
        state = torch.zeros(key_dim, v.shape[-1], dtype=q.dtype)
        for t in range(seq_len):
            key = k[b, t, h]
            state = log_decay[b, t, h].exp()[:, None] * state
            state = state + beta[b, t, h] * key[:, None] * (v[b, t, h] - (key[:, None] * state).sum(0))[None]
            out[b, t, h] = (q[b, t, h][:, None] * state).sum(0)
    return out


def run(inputs, backend, spec, chunk_size=64):
    q, k, v, u, log_decay, beta = (inputs[n] for n in NAMES)
    if backend == "naive":
        return naive_kda_mc(q, k, v, u, spec=spec, log_decay=log_decay, beta=beta)[0]
    return chunk_kda_mc(q, k, v, u, spec=spec, log_decay=log_decay, beta=beta, chunk_size=chunk_size)[0]


def outputs_and_grads(inputs, backend, spec, chunk_size=64):
    inputs = {name: x.detach().requires_grad_() for name, x in inputs.items()}
    out = run(inputs, backend, spec, chunk_size)
    cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=out.dtype)
    grads = torch.autograd.grad((out * cotangent).sum(), list(inputs.values()), materialize_grads=True)
    return out, dict(zip(inputs, grads, strict=True))


def assert_chunk_matches_naive(inputs, spec, chunk_size=64):
    fast, fast_grads = outputs_and_grads(inputs, "torch", spec, chunk_size)
    naive, naive_grads = outputs_and_grads(inputs, "naive", spec)
    torch.testing.assert_close(fast, naive, **TOL)
    for name in inputs:
        torch.testing.assert_close(
            fast_grads[name], naive_grads[name], **TOL, msg=lambda m, name=name: f"grad of {name}: {m}"
        )


def spec_for(aggregation, init, segmentation):
    top_k = 2 if aggregation == "ssc" else None
    return MCSpec(aggregation=aggregation, init=init, top_k=top_k, **SEGMENTATIONS[segmentation])


def test_one_segment_is_plain_kda_with_gradients():
    """DESIGN.md §7.1 in fla's convention: T=70 over chunks of 32 (the chunk-to-chunk recurrence
    included) and the definition both equal the plain loop, outputs and the gradients of q, k, v, g, b."""
    inputs = make_inputs(batch=1, seq_len=70, heads=2, key_dim=6, value_dim=4)
    del inputs["u"]
    leaves = {name: x.detach().requires_grad_() for name, x in inputs.items()}
    want = plain_kda(**leaves)
    want_grads = torch.autograd.grad(want.square().sum(), list(leaves.values()))
    for backend, chunk_size in (("torch", 32), ("torch", 64), ("naive", 64)):
        got = run({**leaves, "u": None}, backend, MCSpec(), chunk_size)
        torch.testing.assert_close(got, want, **TOL)
        grads = torch.autograd.grad(got.square().sum(), list(leaves.values()))
        for name, g, w in zip(leaves, grads, want_grads, strict=True):
            torch.testing.assert_close(g, w, **TOL, msg=lambda m, name=name: f"grad of {name}: {m}")


CASES = [
    (aggregation, init, segmentation)
    for aggregation, init, segmentation in itertools.product(AGGREGATIONS, INITS, SEGMENTATIONS)
    if not (segmentation == "log" and init == "independent")  # a one-line error (test below)
]


@pytest.mark.parametrize("seq_len", [13, 37])
@pytest.mark.parametrize("aggregation,init,segmentation", CASES)
def test_chunk_matches_naive(aggregation, init, segmentation, seq_len):
    """Every aggregation x init x segmentation (log: checkpoint), Dk=5 != Dv=3, gradients of q, k, v, u, g
    and b; the chunk capped at 8 so T=37 runs several chunks and a padded last one."""
    inputs = make_inputs(seq_len=seq_len, seed=seq_len)
    assert_chunk_matches_naive(inputs, spec_for(aggregation, init, segmentation), chunk_size=8)


@pytest.mark.parametrize("case", ["b0", "b1-g0", "b1-g-30", "mixed"])
def test_gates_at_range_ends(case):
    """b in {0, 1} and g in {0, -30, -1e3} per channel: chunk == naive (outputs and gradients), outputs and
    gradients finite in float32 too; b = 0 writes nothing."""
    inputs = make_inputs(seq_len=21)
    shape, beta_shape = inputs["log_decay"].shape, inputs["beta"].shape
    if case == "mixed":
        gen = torch.Generator().manual_seed(3)
        inputs["beta"] = torch.randint(0, 2, beta_shape, generator=gen).double()
        inputs["log_decay"] = torch.tensor([0.0, -30.0, -1e3], dtype=torch.float64)[
            torch.randint(0, 3, shape, generator=gen)
        ]
    else:
        inputs["beta"] = torch.full(beta_shape, 0.0 if case == "b0" else 1.0, dtype=torch.float64)
        value = {"b0": -0.3, "b1-g0": 0.0, "b1-g-30": -30.0}[case]
        inputs["log_decay"] = torch.full(shape, value, dtype=torch.float64)
    spec = spec_for("grm", "checkpoint", "constant4")
    assert_chunk_matches_naive(inputs, spec, chunk_size=16)
    single = {name: x.float() for name, x in inputs.items()}
    out, grads = outputs_and_grads(single, "torch", spec, chunk_size=16)
    assert bool(out.isfinite().all()) and all(bool(g.isfinite().all()) for g in grads.values())
    torch.testing.assert_close(out.double(), run(inputs, "naive", spec), **FLOAT32_TOL)
    if case == "b0":
        assert bool((run(inputs, "torch", spec) == 0).all())


@pytest.mark.parametrize("backend", ["torch", "naive"])
def test_full_strength_without_decay_overwrites(backend):
    """b = 1, g = 0 and orthonormal keys: a key written again replaces its value exactly (the delta rule),
    the other keys keep theirs."""
    eye = torch.eye(4, dtype=torch.float64)
    keys, queries = eye[[0, 1, 0, 2, 1]], eye[[0, 1, 0, 1, 0]]
    values = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    q, k, v = (x.view(1, 5, 1, -1) for x in (queries, keys, values))
    gates = {"log_decay": torch.zeros(1, 5, 1, 4, dtype=torch.float64)}
    inputs = {"q": q, "k": k, "v": v, "u": None, **gates, "beta": torch.ones(1, 5, 1, dtype=torch.float64)}
    torch.testing.assert_close(run(inputs, backend, MCSpec())[0, :, 0], values[[0, 1, 2, 1, 2]], **TOL)


DECODE_CASES = [
    (aggregation, init, segmentation)
    for aggregation, init, segmentation in itertools.product(
        ("grm", "ssc", "residual", "average"), INITS, ("constant4", "log")
    )
    if not (segmentation == "log" and init == "independent")
]


@pytest.mark.parametrize("aggregation,init,segmentation", DECODE_CASES)
@pytest.mark.parametrize("prefill", [3, 4, 8, 9])
def test_prefill_then_decode_matches_parallel(aggregation, init, prefill, segmentation):
    """DESIGN.md §7.7: prefills ending mid-segment (3, 9) and exactly on a boundary (4, 8), then one
    token at a time (the pseudo-value written into the shared caches), equal the parallel pass."""
    inputs = make_inputs(seq_len=13)
    spec = spec_for(aggregation, init, segmentation)
    q, k, v, u, g, b = (inputs[n] for n in NAMES)
    full, full_cache = chunk_kda_mc(q, k, v, u, spec=spec, log_decay=g, beta=b, output_cache=True)
    head = (x[:, :prefill] for x in (q, k, v, u))
    out, cache = chunk_kda_mc(
        *head, spec=spec, log_decay=g[:, :prefill], beta=b[:, :prefill], output_cache=True
    )
    outs = [out]
    for t in range(prefill, 13):
        step = (x[:, t : t + 1] for x in (q, k, v, u))
        out, cache = recurrent_kda_mc(*step, cache=cache, log_decay=g[:, t : t + 1], beta=b[:, t : t + 1])
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=1), full, **TOL)
    torch.testing.assert_close(cache.online, full_cache.online, **TOL)
    torch.testing.assert_close(cache.cached, full_cache.cached, **TOL)
    assert cache.memory == "kda" and cache.position == 13
    assert isinstance(cache, FenwickMemoryCache if segmentation == "log" else MatrixMemoryCache)


@pytest.mark.parametrize("name", ["q", "k", "v", "u"])
@pytest.mark.parametrize("aggregation", ["grm", "ssc", "residual"])
@pytest.mark.parametrize("init", INITS)
def test_nan_never_reaches_earlier_outputs(name, aggregation, init):
    """A NaN at token 11 of row 0 changes no output before it and none of row 1 (the pseudo-values after
    it are NaN and must not reach earlier rows of the chunk), and the chunk path returns NaN exactly where
    the token loop does, but for the matrix memories' documented ssc/independent/NaN-key difference."""
    inputs = make_inputs(seq_len=21)
    dirty = dict(inputs)
    dirty[name] = inputs[name].clone()
    dirty[name][0, 11, 1] = math.nan
    top_k = 1 if aggregation == "ssc" else None
    spec = MCSpec(aggregation=aggregation, init=init, segment_size=5, top_k=top_k)
    naive = run(dirty, "naive", spec)
    for chunk_size in (8, 64):
        clean, fast = run(inputs, "torch", spec, chunk_size), run(dirty, "torch", spec, chunk_size)
        torch.testing.assert_close(fast[0, :11], clean[0, :11], **TOL)
        torch.testing.assert_close(fast[1], clean[1], **TOL)
        if (aggregation, init, name) != ("ssc", "independent", "k"):
            torch.testing.assert_close(fast, naive, **TOL, equal_nan=True)


@pytest.mark.parametrize("name", ["q", "k", "v"])
def test_nan_never_reaches_earlier_outputs_log(name):
    """The same with the log segmentation (checkpoint; grm over Fenwick buckets of the pseudo-values,
    chunks of 4)."""
    inputs = make_inputs(seq_len=21)
    dirty = dict(inputs)
    dirty[name] = inputs[name].clone()
    dirty[name][0, 11, 1] = math.nan
    spec = spec_for("grm", "checkpoint", "log")
    clean, fast = run(inputs, "torch", spec, 4), run(dirty, "torch", spec, 4)
    torch.testing.assert_close(fast[0, :11], clean[0, :11], **TOL)
    torch.testing.assert_close(fast[1], clean[1], **TOL)
    torch.testing.assert_close(fast, run(dirty, "naive", spec), **TOL, equal_nan=True)


def test_float32_against_float64():
    """The float32 chunk path stays within FLOAT32_TOL of the float64 definition (T=64, grm over segments
    of 16, layer-like decays): the bound the docs state."""
    inputs = make_inputs(seq_len=64, key_dim=16, value_dim=16, strength=0.5)
    spec = MCSpec(aggregation="grm", segment_size=16)
    want = run(inputs, "naive", spec)
    got = run({name: x.float() for name, x in inputs.items()}, "torch", spec)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, **FLOAT32_TOL)


def test_public_op_dispatches_and_checks():
    """``memory_caching(memory=KDA(log_decay, beta))``: definition and chunk path agree, decoding continues
    the cache, and log + independent, a per-head decay, a missing beta and Triton are one-line errors."""
    inputs = make_inputs(seq_len=9)
    qkvu = {name: inputs[name] for name in "qkvu"}
    spec = spec_for("ssc", "independent", "constant4")

    def kda(start: int = 0, end: int = 9) -> KDA:
        return KDA(log_decay=inputs["log_decay"][:, start:end], beta=inputs["beta"][:, start:end])

    naive, fast = (memory_caching(**qkvu, memory=kda(), spec=spec, backend=b) for b in ("naive", "torch"))
    torch.testing.assert_close(naive, fast, **TOL)
    head = {name: x[:, :5] for name, x in qkvu.items()}
    _, cache = memory_caching(**head, memory=kda(0, 5), spec=spec, output_cache=True)
    tail = {name: x[:, 5:] for name, x in qkvu.items()}
    torch.testing.assert_close(memory_caching(**tail, memory=kda(5), cache=cache), fast[:, 5:], **TOL)
    with pytest.raises(ValueError, match="memory='kda' supports init='checkpoint' only"):
        memory_caching(**qkvu, memory=kda(), segmentation="log", init="independent")
    with pytest.raises(ValueError, match=r"log_decay must be \[B,T,H,Dk\]"):
        memory_caching(**qkvu, memory=KDA(log_decay=inputs["log_decay"][..., 0], beta=inputs["beta"]))
    with pytest.raises(ValueError, match=r"memory='kda' needs \['beta'\]"), pytest.warns(DeprecationWarning):
        memory_caching(**qkvu, memory="kda", log_decay=inputs["log_decay"])  # the keyword form, deprecated
    with pytest.raises(ValueError, match="backend='triton' runs the linear and swla memories"):
        memory_caching(**qkvu, memory=kda(), backend="triton")
