"""MC over matrix memories: the parallel path and the decode step against the token-loop definition,
and the identities of DESIGN.md §7 (float64, random inputs, awkward shapes, gradients)."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mcrnn.ops import memory_caching
from mcrnn.ops.memories import Linear, memory_inputs

AGGREGATIONS = ("residual", "grm", "soup", "ssc", "average")
TOL = dict(atol=1e-10, rtol=1e-10)


def make_inputs(batch=2, seq_len=13, heads=2, key_dim=4, value_dim=3, seed=0, grad=False, swla=False):
    """Random float64 q, k, v, u, log_decay (<= 0) and, for swla, gates in (0, 1)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, low=None):
        x = torch.randn(*shape, generator=gen, dtype=torch.float64)
        if low == "decay":
            x = -torch.rand(*shape, generator=gen, dtype=torch.float64) * 0.7
        elif low == "gate":
            x = torch.rand(*shape, generator=gen, dtype=torch.float64) * 0.9 + 0.05
        return x.requires_grad_(grad)

    inputs = {
        "q": rand(batch, seq_len, heads, key_dim),
        "k": rand(batch, seq_len, heads, key_dim),
        "v": rand(batch, seq_len, heads, value_dim),
        "u": rand(batch, seq_len, heads, key_dim),
        "log_decay": rand(batch, seq_len, heads, low="decay"),
    }
    if swla:
        inputs["prev_gate"] = rand(batch, seq_len, heads, low="gate")
        inputs["cur_gate"] = rand(batch, seq_len, heads, low="gate")
    return inputs


def run(inputs, **options):
    q, k, v, u = (inputs[n] for n in "qkvu")
    extra = {n: inputs[n] for n in ("log_decay", "prev_gate", "cur_gate") if n in inputs}
    memory = memory_inputs(options.pop("memory", "linear"), **extra)
    return memory_caching(q, k, v, u, memory=memory, **options)


def top_k_for(aggregation):
    return 2 if aggregation == "ssc" else None


CASES = list(
    itertools.product(
        AGGREGATIONS,
        ("checkpoint", "independent"),
        ("linear", "swla"),
        (1, 3, 5, None, 40),  # one-token segments, T % C != 0, one segment, a segment longer than T
    )
)


@pytest.mark.parametrize("aggregation,init,memory,segment_size", CASES)
def test_parallel_matches_naive_outputs_and_gradients(aggregation, init, memory, segment_size):
    """§7.6 and §7.8: the chunked path equals the token loop, outputs and every input's gradient."""
    inputs = make_inputs(grad=True, swla=memory == "swla")
    options = dict(
        segment_size=segment_size,
        aggregation=aggregation,
        init=init,
        memory=memory,
        top_k=top_k_for(aggregation),
    )
    weight = torch.randn(2, 13, 2, 3, dtype=torch.float64)
    reference = run(inputs, backend="naive", **options)
    fast = run(inputs, backend="torch", chunk_size=2, **options)
    torch.testing.assert_close(fast, reference, **TOL)
    names = list(inputs)
    grads_ref = torch.autograd.grad(
        (reference * weight).sum(), [inputs[n] for n in names], allow_unused=True, materialize_grads=True
    )
    grads_fast = torch.autograd.grad(
        (fast * weight).sum(), [inputs[n] for n in names], allow_unused=True, materialize_grads=True
    )
    for name, expected, got in zip(names, grads_ref, grads_fast, strict=True):
        torch.testing.assert_close(got, expected, **TOL, msg=lambda m, n=name: f"grad {n}: {m}")
    assert any(g.abs().sum() > 0 for g in grads_fast)


@pytest.mark.parametrize("lengths", [[4, 1, 6, 2], [13], [1] * 13, [7, 6]])
@pytest.mark.parametrize("aggregation", ["grm", "ssc"])
def test_explicit_segment_lengths(lengths, aggregation):
    inputs = make_inputs()
    options = dict(segment_lengths=lengths, aggregation=aggregation, top_k=top_k_for(aggregation))
    torch.testing.assert_close(
        run(inputs, backend="torch", **options), run(inputs, backend="naive", **options), **TOL
    )


def plain_decayed_linear_attention(q, k, v, log_decay):
    """o_t = sum_{j<=t} exp(G_t - G_j) (q_t . k_j) v_j with G the cumulative log decay (no segments)."""
    cum = log_decay.cumsum(1)  # [B, T, H]
    decay = (cum.unsqueeze(2) - cum.unsqueeze(1)).permute(0, 3, 1, 2)  # [B, H, T, T]
    causal = torch.ones(q.shape[1], q.shape[1], dtype=torch.bool).tril()
    weights = torch.einsum("bthd,bshd->bhts", q, k) * decay.masked_fill(~causal, float("-inf")).exp()
    return torch.einsum("bhts,bshd->bthd", weights, v)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("init", ["checkpoint", "independent"])
def test_one_segment_is_the_base_memory(aggregation, init):
    """§7.1: one segment covering the sequence gives exactly the base (decayed) linear attention."""
    inputs = make_inputs(seq_len=9)
    expected = plain_decayed_linear_attention(inputs["q"], inputs["k"], inputs["v"], inputs["log_decay"])
    for segment_size in (None, 9, 50):
        got = run(
            inputs,
            segment_size=segment_size,
            aggregation=aggregation,
            init=init,
            top_k=top_k_for(aggregation),
        )
        torch.testing.assert_close(got, expected, **TOL)


@pytest.mark.parametrize("segment_size", [1, 3, 4])
def test_residual_independent_is_linear_attention(segment_size):
    """§7.2: residual + independent + linear without decay equals causal linear attention."""
    inputs = make_inputs(seq_len=11)
    inputs.pop("log_decay")
    expected = plain_decayed_linear_attention(
        inputs["q"], inputs["k"], inputs["v"], torch.zeros(inputs["q"].shape[:3], dtype=torch.float64)
    )
    got = run(inputs, segment_size=segment_size, aggregation="residual", init="independent")
    torch.testing.assert_close(got, expected, **TOL)


def parameter_soup(inputs, segment_size, init, memory):
    """``y_t = q_t^T (sum_{i<s} g_{t,i} M(i) + g_{t,s} M_t)``: the matrices themselves mixed with the
    router gates (mean-pooled keys), then read once; states by the recurrences of DESIGN.md §6."""
    q, k, v, u, log_decay = (inputs[n] for n in ("q", "k", "v", "u", "log_decay"))
    batch, seq_len, heads, key_dim = q.shape
    state = q.new_zeros(batch, heads, key_dim, v.shape[-1])
    cached, contexts, outputs, start = [], [], [], 0
    for t in range(seq_len):
        if t > 0 and t % segment_size == 0:
            cached.append(state)
            contexts.append(k[:, start:t].mean(1))
            start = t
            if init == "independent":
                state = torch.zeros_like(state)
        write = torch.einsum("bhk,bhv->bhkv", k[:, t], v[:, t])
        if memory == "swla":
            write = inputs["cur_gate"][:, t, :, None, None] * write
            if t > start or (t > 0 and init == "checkpoint"):
                previous = torch.einsum("bhk,bhv->bhkv", k[:, t - 1], v[:, t - 1])
                write = write + inputs["prev_gate"][:, t, :, None, None] * previous
        state = log_decay[:, t, :, None, None].exp() * state + write
        pooled = [*contexts, k[:, start : t + 1].mean(1)]  # [B, H, Dk] each
        gates = torch.softmax(torch.stack([(u[:, t] * c).sum(-1) for c in pooled], -1), -1)  # [B, H, s]
        mixed = sum(gates[..., i, None, None] * m for i, m in enumerate([*cached, state]))
        outputs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], mixed))
    return torch.stack(outputs, 1)


@pytest.mark.parametrize("memory", ["linear", "swla"])
@pytest.mark.parametrize("init", ["checkpoint", "independent"])
def test_soup_equals_grm_for_matrix_memories(memory, init):
    """§7.3: mixing the parameters of matrix memories is mixing their reads. The parameter mixture is
    formed explicitly here; soup (both backends) and grm must equal it."""
    inputs = make_inputs(swla=memory == "swla")
    expected = parameter_soup(inputs, 3, init, memory)
    for aggregation, backend in itertools.product(("soup", "grm"), ("torch", "naive")):
        got = run(inputs, segment_size=3, aggregation=aggregation, init=init, memory=memory, backend=backend)
        torch.testing.assert_close(
            got, expected, **TOL, msg=lambda m, a=aggregation, b=backend: f"{a} {b}: {m}"
        )


@pytest.mark.parametrize("backend", ["torch", "naive"])
def test_ssc_with_enough_k_equals_grm(backend):
    """§7.4: ssc with k >= N - 1 selects every cached segment, so it equals grm."""
    inputs = make_inputs(seq_len=13)
    grm = run(inputs, segment_size=3, aggregation="grm", backend=backend)
    for top_k in (4, 5, 100):  # N = 5 segments
        ssc = run(inputs, segment_size=3, aggregation="ssc", top_k=top_k, backend=backend)
        torch.testing.assert_close(ssc, grm, **TOL)
    assert not torch.allclose(run(inputs, segment_size=3, aggregation="ssc", top_k=1), grm)


def test_aggregations_differ():
    """A guard on the tests above: the aggregations are not accidentally the same function."""
    inputs = make_inputs()
    outs = {
        a: run(inputs, segment_size=3, aggregation=a, top_k=1) for a in ("residual", "grm", "ssc", "average")
    }
    for a, b in itertools.combinations(outs, 2):
        assert not torch.allclose(outs[a], outs[b]), (a, b)


DECODE_CASES = list(
    itertools.product(
        ("residual", "grm", "ssc", "average"), ("checkpoint", "independent"), ("linear", "swla")
    )
)


@pytest.mark.parametrize("aggregation,init,memory", DECODE_CASES)
@pytest.mark.parametrize("prefill", [0, 1, 5, 6])
def test_decoding_equals_parallel(aggregation, init, memory, prefill):
    """§7.7: a parallel prefill then one token at a time from the cache equals the parallel forward."""
    inputs = make_inputs(seq_len=13, swla=memory == "swla")
    options = dict(
        segment_size=3, aggregation=aggregation, init=init, memory=memory, top_k=top_k_for(aggregation)
    )
    expected = run(inputs, **options)
    outputs = []
    cache = None
    if prefill:
        out, cache = run({n: x[:, :prefill] for n, x in inputs.items()}, output_cache=True, **options)
        outputs.append(out)
    for t in range(prefill, 13):
        step = {n: x[:, t : t + 1] for n, x in inputs.items()}
        if cache is None:
            out, cache = run(step, output_cache=True, **options)
        else:
            out, cache = run(step, cache=cache, output_cache=True, **options)
        outputs.append(out)
    torch.testing.assert_close(torch.cat(outputs, dim=1), expected, **TOL)
    assert cache.position == 13 and cache.num_cached == 4


def test_decoding_with_explicit_lengths():
    """The lengths describe the stream: a prefill of 4 tokens sees segments [2, 2 of 5], and decoding
    continues from the cache's spec without passing it again; a conflicting spec is an error."""
    inputs = make_inputs(seq_len=12)
    options = dict(segment_lengths=[2, 5, 3], aggregation="grm")
    expected = run(inputs, **options)  # tokens 10, 11 continue the last segment
    out, cache = run({n: x[:, :4] for n, x in inputs.items()}, output_cache=True, **options)
    assert cache.spec.segment_lengths == (2, 5, 3) and cache.position == 4
    rest, _ = run({n: x[:, 4:] for n, x in inputs.items()}, cache=cache, output_cache=True)
    torch.testing.assert_close(torch.cat([out, rest], 1), expected, **TOL)
    with pytest.raises(ValueError, match=r"segment_lengths=\[2, 2\] \(cache: \[2, 5, 3\]\)"):
        run({n: x[:, 4:] for n, x in inputs.items()}, cache=cache, segment_lengths=[2, 2])


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 2),
    seq_len=st.integers(1, 12),
    heads=st.integers(1, 3),
    key_dim=st.integers(1, 5),
    value_dim=st.integers(1, 5),
    segment_size=st.integers(1, 14),
    aggregation=st.sampled_from(AGGREGATIONS),
    init=st.sampled_from(["checkpoint", "independent"]),
    memory=st.sampled_from(["linear", "swla"]),
    chunk_size=st.integers(1, 8),
    seed=st.integers(0, 10_000),
)
def test_fuzz_shapes(
    batch, seq_len, heads, key_dim, value_dim, segment_size, aggregation, init, memory, chunk_size, seed
):
    inputs = make_inputs(batch, seq_len, heads, key_dim, value_dim, seed=seed, swla=memory == "swla")
    options = dict(
        segment_size=segment_size,
        aggregation=aggregation,
        init=init,
        memory=memory,
        top_k=top_k_for(aggregation),
    )
    fast = run(inputs, backend="torch", chunk_size=chunk_size, **options)
    assert fast.shape == (batch, seq_len, heads, value_dim)
    torch.testing.assert_close(fast, run(inputs, backend="naive", **options), **TOL)


def test_pooling_sum_differs_from_mean_and_matches_naive():
    inputs = make_inputs()
    for backend in ("torch", "naive"):
        assert not torch.allclose(
            run(inputs, segment_size=3, pooling="sum", backend=backend),
            run(inputs, segment_size=3, pooling="mean", backend=backend),
        )
    torch.testing.assert_close(
        run(inputs, segment_size=3, pooling="sum"),
        run(inputs, segment_size=3, pooling="sum", backend="naive"),
        **TOL,
    )


def test_u_defaults_to_q():
    inputs = make_inputs()
    inputs_q = dict(inputs, u=inputs["q"])
    no_u = memory_caching(
        inputs["q"], inputs["k"], inputs["v"], segment_size=3, memory=Linear(inputs["log_decay"])
    )
    torch.testing.assert_close(no_u, run(inputs_q, segment_size=3), atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_low_precision_returns_input_dtype(dtype):
    """Against float64 on the same rounded inputs: max |error| / max |output| in units of the dtype's
    eps, measured over seeds 0-9 on this CPU: bf16 0.49, fp16 0.49 (the output's rounding; the state
    accumulates in float32), fp32 1.2. Bound: 4."""
    inputs = make_inputs(seq_len=16, key_dim=8, value_dim=8)
    low = {n: x.to(dtype) for n, x in inputs.items()}
    out = run(low, segment_size=4)
    assert out.dtype == dtype
    reference = run({n: x.to(dtype).double() for n, x in inputs.items()}, segment_size=4)
    error = (out.double() - reference).abs().max() / reference.abs().max()
    assert error <= 4 * torch.finfo(dtype).eps, f"{error / torch.finfo(dtype).eps:.2f} eps"


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_input_gives_nan_output(aggregation, bad):
    """A non-finite input poisons its own sequence from that token on, never another batch element.

    (Tokens of the same sequence before it may turn NaN too: a block of the cached read multiplies
    zero gates by the states of later segments, and 0 * NaN = NaN.)"""
    inputs = make_inputs()
    inputs["k"] = inputs["k"].clone()
    inputs["k"][0, 4, 0, 1] = bad
    out = run(inputs, segment_size=3, aggregation=aggregation, top_k=top_k_for(aggregation))
    assert out.shape == (2, 13, 2, 3)
    assert out[0, 4:, 0].isnan().any()
    assert torch.isfinite(out[1]).all()


def test_output_is_causal():
    inputs = make_inputs(seq_len=12, grad=False)
    base = run(inputs, segment_size=3, aggregation="ssc", top_k=1)
    changed = {n: x.clone() for n, x in inputs.items()}
    for name in ("q", "k", "v", "u"):
        changed[name][:, 7:] = torch.randn_like(changed[name][:, 7:])
    after = run(changed, segment_size=3, aggregation="ssc", top_k=1)
    torch.testing.assert_close(after[:, :7], base[:, :7], atol=0, rtol=0)
    assert not torch.allclose(after[:, 7:], base[:, 7:])


@pytest.mark.parametrize("backend", ["torch", "naive"])
def test_one_token_segments_give_softmax_attention(backend):
    """§7.5: segments of one token with a value-less read give gated softmax attention (Eq. 18-20).

    Keys get an extra coordinate 1 and queries read only that coordinate, so every memory reads back
    its value (``q'^T k'_i v_i^T = v_i``), while the router sees the real keys: ``u'.k'_i = u.k_i``.
    Then ``y_t = sum_{i<=t} softmax_i(u_t . k_i) v_i``: causal attention with scores ``u.k``.
    """
    gen = torch.Generator().manual_seed(3)
    batch, seq_len, heads, dim = 2, 9, 2, 4
    u, k, v = (torch.randn(batch, seq_len, heads, dim, generator=gen, dtype=torch.float64) for _ in range(3))
    ones = torch.ones(batch, seq_len, heads, 1, dtype=torch.float64)
    k_aug = torch.cat([k, ones], -1)
    q_aug = torch.cat([torch.zeros_like(k), ones], -1)
    u_aug = torch.cat([u, torch.zeros_like(ones)], -1)
    out = memory_caching(
        q_aug, k_aug, v, u_aug, segment_size=1, aggregation="grm", init="independent", backend=backend
    )
    attention = torch.nn.functional.scaled_dot_product_attention(
        u.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, scale=1.0
    ).transpose(1, 2)
    torch.testing.assert_close(out, attention, **TOL)
