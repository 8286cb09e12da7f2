"""MC over the ``gla`` memory (a decay per key channel): one segment is a plain gated linear attention
token loop written here (fla's convention, no ``q`` scale), the chunkwise path equals the token-loop
definition for every aggregation, init and segmentation (outputs and gradients, float64), decoding
equals the parallel pass, gates at their range ends, causality of NaN, float32 against float64."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from mcrnn.ops import FenwickMemoryCache, MatrixMemoryCache, MCSpec, memory_caching
from mcrnn.ops.gla import chunk_gla_mc, naive_gla_mc, recurrent_gla_mc
from mcrnn.ops.gla.chunk import decayed_scores
from mcrnn.ops.memories import GLA

AGGREGATIONS = ("residual", "grm", "soup", "ssc", "average")
INITS = ("checkpoint", "independent")
TOL = dict(atol=1e-10, rtol=1e-10)
#: float32 path against the float64 definition, unit-scale inputs, T <= 64 (measured 1e-5, 3e-7 of max |o|)
FLOAT32_TOL = dict(atol=1e-4, rtol=1e-4)
# one segment; segments of 4 (T not a multiple); one-token segments; explicit lengths (a one-token one)
SEGMENTATIONS = {
    "none": {},
    "constant4": {"segment_size": 4},
    "one_token": {"segment_size": 1},
    "explicit": {"segment_lengths": (3, 1, 6, 2)},
    "log": {"segmentation": "log"},
}


def make_inputs(batch=2, seq_len=13, heads=2, key_dim=5, value_dim=3, seed=0, strength=1.0):
    """Random float64 q, k, v, u and per-channel log decays in [-strength, 0]."""
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, seq_len, heads)
    return {
        "q": torch.randn(*shape, key_dim, generator=gen, dtype=torch.float64),
        "k": torch.randn(*shape, key_dim, generator=gen, dtype=torch.float64),
        "v": torch.randn(*shape, value_dim, generator=gen, dtype=torch.float64),
        "u": torch.randn(*shape, key_dim, generator=gen, dtype=torch.float64),
        "log_decay": -strength * torch.rand(*shape, key_dim, generator=gen, dtype=torch.float64),
    }


def plain_gla(q, k, v, log_decay):
    """Gated linear attention per head, fla's ``naive_recurrent_gla`` without its scale:
    ``S = diag(exp(g_t)) S + k_t v_t^T``, ``o_t = q_t^T S``."""
    batch, seq_len, heads, key_dim = q.shape
    out = torch.zeros(batch, seq_len, heads, v.shape[-1], dtype=q.dtype)
    for b, h in itertools.product(range(batch), range(heads)):
        state = torch.zeros(key_dim, v.shape[-1], dtype=q.dtype)
        for t in range(seq_len):
            state = log_decay[b, t, h].exp()[:, None] * state + k[b, t, h][:, None] * v[b, t, h][None]
            out[b, t, h] = (q[b, t, h][:, None] * state).sum(0)
    return out


def run(inputs, backend, spec, chunk_size=64):
    q, k, v, u, log_decay = (inputs[n] for n in ("q", "k", "v", "u", "log_decay"))
    if backend == "naive":
        return naive_gla_mc(q, k, v, u, spec=spec, log_decay=log_decay)[0]
    return chunk_gla_mc(q, k, v, u, spec=spec, log_decay=log_decay, chunk_size=chunk_size)[0]


def outputs_and_grads(inputs, backend, spec, chunk_size=64):
    inputs = {name: x.detach().requires_grad_() for name, x in inputs.items()}
    out = run(inputs, backend, spec, chunk_size)
    cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=out.dtype)
    grads = torch.autograd.grad((out * cotangent).sum(), list(inputs.values()), materialize_grads=True)
    return out, dict(zip(inputs, grads, strict=True))


def assert_chunk_matches_naive(inputs, spec, chunk_size=64, **tol):
    tol = tol or TOL
    fast, fast_grads = outputs_and_grads(inputs, "torch", spec, chunk_size)
    naive, naive_grads = outputs_and_grads(inputs, "naive", spec)
    torch.testing.assert_close(fast, naive, **tol)
    for name in inputs:
        torch.testing.assert_close(
            fast_grads[name], naive_grads[name], **tol, msg=lambda m, name=name: f"grad of {name}: {m}"
        )


def spec_for(aggregation, init, segmentation):
    top_k = 2 if aggregation == "ssc" else None
    return MCSpec(aggregation=aggregation, init=init, top_k=top_k, **SEGMENTATIONS[segmentation])


def test_one_segment_is_plain_gla_with_gradients():
    """DESIGN.md §7.1 in fla's convention: T=70 over chunks of 32 (the chunk scan included) and the
    definition both equal the plain loop, outputs and the gradients of q, k, v and g."""
    inputs = make_inputs(batch=1, seq_len=70, heads=2, key_dim=6, value_dim=4)
    del inputs["u"]
    leaves = {name: x.detach().requires_grad_() for name, x in inputs.items()}
    want = plain_gla(**leaves)
    want_grads = torch.autograd.grad(want.square().sum(), list(leaves.values()))
    for backend, chunk_size in (("torch", 32), ("torch", 64), ("naive", 64)):
        got = run({**leaves, "u": None}, backend, MCSpec(), chunk_size)
        torch.testing.assert_close(got, want, **TOL)
        grads = torch.autograd.grad(got.square().sum(), list(leaves.values()))
        for name, g, w in zip(leaves, grads, want_grads, strict=True):
            torch.testing.assert_close(g, w, **TOL, msg=lambda m, name=name: f"grad of {name}: {m}")


@pytest.mark.parametrize("seq_len", [13, 37])
@pytest.mark.parametrize("segmentation", SEGMENTATIONS)
@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_chunk_matches_naive(aggregation, init, segmentation, seq_len):
    """Every aggregation x init x segmentation (log: both inits), Dk=5 != Dv=3, gradients of q, k, v, u and
    g; the chunk capped at 8 so T=37 runs several chunks (and a padded last one; log: levels read from the
    chunk scan)."""
    inputs = make_inputs(seq_len=seq_len, seed=seq_len)
    assert_chunk_matches_naive(inputs, spec_for(aggregation, init, segmentation), chunk_size=8)


@pytest.mark.parametrize("chunk", [1, 2, 5, 8, 13, 16])
@pytest.mark.parametrize("strict", [False, True])
def test_decayed_scores_against_explicit_weights(chunk, strict):
    """The halving form equals the explicit ``sum_d x_t y_j exp(G_t - G_j)`` (chunks that are and are not
    powers of two), gradients included (gradcheck of the hand-written backward)."""
    gen = torch.Generator().manual_seed(chunk)
    x, y = (torch.randn(2, chunk, 3, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(2))
    log_decay = (-2 * torch.rand(2, chunk, 3, generator=gen, dtype=torch.float64)).requires_grad_()
    cum = log_decay.cumsum(-2)
    weights = (cum.unsqueeze(-2) - cum.unsqueeze(-3)).exp()
    want = torch.einsum("btd,bjd,btjd->btj", x, y, weights).tril(-1 if strict else 0)
    torch.testing.assert_close(decayed_scores(x, y, cum, strict), want, **TOL)
    scores = lambda a, b, g: decayed_scores(a, b, g.cumsum(-2), strict)  # noqa: E731
    assert torch.autograd.gradcheck(scores, (x, y, log_decay))


@pytest.mark.parametrize("decay", ["zero", "strong", "mixed"])
def test_gates_at_range_ends(decay):
    """g = 0 (no decay), g = -30 (float32 exp(30 * 16) would overflow any factored form) and a mix of
    0, -30 and -1e3 per channel: chunk == naive, outputs and gradients finite, also in float32."""
    inputs = make_inputs(seq_len=21)
    shape = inputs["log_decay"].shape
    if decay == "zero":
        inputs["log_decay"] = torch.zeros(shape, dtype=torch.float64)
    elif decay == "strong":
        inputs["log_decay"] = torch.full(shape, -30.0, dtype=torch.float64)
    else:
        pick = torch.randint(0, 3, shape, generator=torch.Generator().manual_seed(3))
        inputs["log_decay"] = torch.tensor([0.0, -30.0, -1e3], dtype=torch.float64)[pick]
    spec = spec_for("grm", "checkpoint", "constant4")
    assert_chunk_matches_naive(inputs, spec, chunk_size=16)
    single = {name: x.float() for name, x in inputs.items()}
    out, grads = outputs_and_grads(single, "torch", spec, chunk_size=16)
    assert bool(out.isfinite().all()) and all(bool(g.isfinite().all()) for g in grads.values())
    torch.testing.assert_close(out.double(), run(inputs, "naive", spec), **FLOAT32_TOL)
    if decay == "strong":  # nothing survives a token: o_t = (q_t . k_t) v_t read at the token
        want = (inputs["q"] * inputs["k"]).sum(-1, keepdim=True) * inputs["v"]
        torch.testing.assert_close(run(inputs, "torch", MCSpec()), want, **TOL)


@pytest.mark.parametrize("segmentation", ["constant4", "log"])
@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("aggregation", ["grm", "ssc", "residual", "average"])
@pytest.mark.parametrize("prefill", [3, 4, 8, 9])
def test_prefill_then_decode_matches_parallel(aggregation, init, prefill, segmentation):
    """DESIGN.md §7.7: prefills ending mid-segment (3, 9) and exactly on a boundary (4, 8; for log a
    power of two, where the Fenwick buckets merge), then one token at a time, equal the parallel pass;
    the final caches agree."""
    inputs = make_inputs(seq_len=13)
    spec = spec_for(aggregation, init, segmentation)
    q, k, v, u, g = (inputs[n] for n in ("q", "k", "v", "u", "log_decay"))
    full, full_cache = chunk_gla_mc(q, k, v, u, spec=spec, log_decay=g, output_cache=True)
    head = (x[:, :prefill] for x in (q, k, v, u))
    out, cache = chunk_gla_mc(*head, spec=spec, log_decay=g[:, :prefill], output_cache=True)
    outs = [out]
    for t in range(prefill, 13):
        step = (x[:, t : t + 1] for x in (q, k, v, u))
        out, cache = recurrent_gla_mc(*step, cache=cache, log_decay=g[:, t : t + 1])
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=1), full, **TOL)
    torch.testing.assert_close(cache.online, full_cache.online, **TOL)
    torch.testing.assert_close(cache.cached, full_cache.cached, **TOL)
    assert cache.memory == "gla" and cache.position == 13
    assert isinstance(cache, FenwickMemoryCache if segmentation == "log" else MatrixMemoryCache)


@pytest.mark.parametrize("name", ["q", "k", "v", "u"])
@pytest.mark.parametrize("aggregation", ["grm", "ssc", "residual"])
@pytest.mark.parametrize("init", INITS)
def test_nan_never_reaches_earlier_outputs(name, aggregation, init):
    """A NaN at token 11 of row 0 changes no output before it and none of row 1, and the chunk path
    returns NaN exactly where the token loop does (T=21, segments of 5, chunks of 8 and 64), but for the
    matrix memories' documented ssc/independent/NaN-key difference (tests/ops/test_nonfinite.py)."""
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
@pytest.mark.parametrize("init", INITS)
def test_nan_never_reaches_earlier_outputs_log(name, init):
    """The same with the log segmentation (grm over Fenwick buckets, chunks of 4 so that levels are read
    both inside a chunk and from the chunk scan): earlier outputs and the other row unchanged, NaN where
    the token loop has it."""
    inputs = make_inputs(seq_len=21)
    dirty = dict(inputs)
    dirty[name] = inputs[name].clone()
    dirty[name][0, 11, 1] = math.nan
    spec = spec_for("grm", init, "log")
    clean, fast = run(inputs, "torch", spec, 4), run(dirty, "torch", spec, 4)
    torch.testing.assert_close(fast[0, :11], clean[0, :11], **TOL)
    torch.testing.assert_close(fast[1], clean[1], **TOL)
    torch.testing.assert_close(fast, run(dirty, "naive", spec), **TOL, equal_nan=True)


def test_float32_against_float64():
    """The float32 chunk path stays within FLOAT32_TOL of the float64 definition (T=64, grm over segments
    of 16, layer-like decays): the bound the docs state."""
    inputs = make_inputs(seq_len=64, key_dim=16, value_dim=16, strength=0.5)
    spec = spec_for("grm", "checkpoint", "none").replace(segment_size=16)
    want = run(inputs, "naive", spec)
    got = run({name: x.float() for name, x in inputs.items()}, "torch", spec)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, **FLOAT32_TOL)


def test_public_op_dispatches_and_checks():
    """``memory_caching(memory=GLA(log_decay))`` runs the definition (``naive``) and the chunk path
    (``auto``, ``torch``) to one result, decodes from its cache, and rejects a per-head decay, a positive
    one, a missing one and the Triton backend with one-line errors naming the argument."""
    inputs = make_inputs(seq_len=9)
    qkvu = {name: inputs[name] for name in "qkvu"}
    spec = spec_for("grm", "checkpoint", "constant4")
    gla = GLA(log_decay=inputs["log_decay"])
    outs = [memory_caching(**qkvu, memory=gla, spec=spec, backend=b) for b in ("naive", "torch", "auto")]
    torch.testing.assert_close(outs[0], outs[1], **TOL)
    torch.testing.assert_close(outs[2], outs[1], atol=0, rtol=0)
    head = {name: x[:, :5] for name, x in qkvu.items()}
    _, cache = memory_caching(**head, memory=GLA(inputs["log_decay"][:, :5]), spec=spec, output_cache=True)
    tail = {name: x[:, 5:] for name, x in qkvu.items()}
    decoded = memory_caching(**tail, memory=GLA(inputs["log_decay"][:, 5:]), cache=cache)
    torch.testing.assert_close(decoded, outs[1][:, 5:], **TOL)
    with pytest.raises(ValueError, match=r"log_decay must be \[B,T,H,Dk\]"):
        memory_caching(**qkvu, memory=GLA(inputs["log_decay"][..., 0]))
    with pytest.raises(ValueError, match="log_decay must be finite and <= 0"):
        memory_caching(**qkvu, memory=GLA(-inputs["log_decay"] + 0.1))
    with pytest.raises(ValueError, match="backend='triton' runs the linear and swla memories"):
        memory_caching(**qkvu, memory=gla, backend="triton")
    with pytest.raises(ValueError, match=r"memory='gla' needs \['log_decay'\]"):
        memory_caching(**qkvu, memory="gla")
