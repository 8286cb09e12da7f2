"""Log-Linear++ over ``swla`` (``init="checkpoint"``): the parallel path (one linear Fenwick run per write
stream, the router on ``k``) and decoding against the token loop, DESIGN.md §5."""

from __future__ import annotations

import pytest
import torch

from mcrnn.ops import memory_caching
from mcrnn.ops.memories import SWLA, Linear

TOL = dict(atol=1e-10, rtol=1e-10)
AGGREGATIONS = ["residual", "grm", "ssc", "average"]


def inputs(seq_len=21, seed=0, grad=False, decay=True, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    shapes = {"q": 3, "k": 3, "v": 4, "u": 3}
    out = {n: torch.randn(2, seq_len, 2, d, generator=gen, dtype=dtype) for n, d in shapes.items()}
    out["log_decay"] = -torch.rand(2, seq_len, 2, generator=gen, dtype=dtype) if decay else None
    out["prev_gate"] = torch.rand(2, seq_len, 2, generator=gen, dtype=dtype)
    out["cur_gate"] = torch.rand(2, seq_len, 2, generator=gen, dtype=dtype)
    return {n: (x.requires_grad_(grad) if x is not None else None) for n, x in out.items()}


def run(x, **options):
    tensors = {n: t for n, t in x.items() if n not in "qkvu"}
    return memory_caching(
        x["q"], x["k"], x["v"], x["u"], memory=SWLA(**tensors), segmentation="log", **options
    )


def options_of(aggregation):
    return dict(aggregation=aggregation, top_k=1 if aggregation == "ssc" else None)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("decay", [True, False])
@pytest.mark.parametrize("chunk_size,seq_len", [(1, 13), (4, 21), (64, 37)])
def test_parallel_matches_naive_with_every_gradient(aggregation, decay, chunk_size, seq_len):
    x = inputs(seq_len=seq_len, grad=True, decay=decay)
    reference = run(x, backend="naive", **options_of(aggregation))
    fast = run(x, backend="torch", chunk_size=chunk_size, **options_of(aggregation))
    torch.testing.assert_close(fast, reference, **TOL)
    leaves = [t for t in x.values() if t is not None]
    weight = torch.randn_like(fast)
    expected = torch.autograd.grad(
        (reference * weight).sum(), leaves, materialize_grads=True, allow_unused=True
    )
    got = torch.autograd.grad((fast * weight).sum(), leaves, materialize_grads=True, allow_unused=True)
    for name, a, b in zip([n for n, t in x.items() if t is not None], got, expected, strict=True):
        torch.testing.assert_close(a, b, **TOL, msg=lambda m, name=name: f"d/d{name}: {m}")


def test_the_previous_token_term_is_read():
    """With ``prev_gate = 0`` swla is the linear memory with keys ``l_t k_t`` (compared through
    ``residual``, which has no router); a non-zero ``prev_gate`` changes the output."""
    x = inputs()
    silent = dict(x, prev_gate=torch.zeros_like(x["prev_gate"]))
    linear = memory_caching(
        x["q"], x["k"] * x["cur_gate"].unsqueeze(-1), x["v"], x["u"], memory=Linear(x["log_decay"]),
        segmentation="log", aggregation="residual",
    )
    torch.testing.assert_close(run(silent, aggregation="residual"), linear, **TOL)
    assert not torch.allclose(run(x, aggregation="residual"), linear)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("prefill", [1, 6, 8])
def test_decoding_equals_parallel(aggregation, prefill):
    x = inputs()
    expected = run(x, **options_of(aggregation))
    head = {n: (t[:, :prefill] if t is not None else None) for n, t in x.items()}
    out, cache = run(head, output_cache=True, **options_of(aggregation))
    assert cache.memory == "swla"
    outputs = [out]
    for t in range(prefill, 21):
        step = {n: (v[:, t : t + 1] if v is not None else None) for n, v in x.items()}
        out, cache = run(step, cache=cache, output_cache=True, **options_of(aggregation))
        outputs.append(out)
    torch.testing.assert_close(torch.cat(outputs, 1), expected, **TOL)


def test_a_linear_cache_is_refused_by_an_swla_call():
    x = inputs()
    linear = {n: x[n] for n in ("q", "k", "v", "u")}
    _, cache = memory_caching(**linear, memory=Linear(x["log_decay"]), segmentation="log", output_cache=True)
    step = {n: (t[:, :1] if t is not None else None) for n, t in x.items()}
    with pytest.raises(ValueError, match="the cache is for memory='linear'"):
        run(step, cache=cache)


def test_prefix_outputs_do_not_depend_on_later_tokens():
    x = inputs(seq_len=30)
    full = run(x, aggregation="grm")
    prefix = run({n: (t[:, :19] if t is not None else None) for n, t in x.items()}, aggregation="grm")
    torch.testing.assert_close(full[:, :19], prefix, **TOL)


def test_float32_is_close_to_float64():
    """Measured worst relative error (|a - b| / (1 + |b|)) about 1e-7 here; bound 1e-5."""
    x64 = inputs(seq_len=100, decay=True)
    x32 = {n: (t.float() if t is not None else None) for n, t in x64.items()}
    for aggregation in AGGREGATIONS:
        got, reference = run(x32, **options_of(aggregation)), run(x64, **options_of(aggregation))
        error = ((got.double() - reference).abs() / (1 + reference.abs())).max().item()
        assert error < 1e-5, (aggregation, error)


def test_the_layer_and_the_model_run_swla_with_log_segments():
    from mcrnn.layers import MemoryCachingAttention
    from mcrnn.models import MCConfig, MCForCausalLM

    layer = MemoryCachingAttention(16, 2, memory="swla", segmentation="log", aggregation="grm").double()
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    full, _ = layer(x)
    y, cache = layer(x[:, :5], use_cache=True)
    steps = [y]
    for t in range(5, 11):
        y, cache = layer(x[:, t : t + 1], cache=cache, use_cache=True)
        steps.append(y)
    torch.testing.assert_close(torch.cat(steps, 1), full, **TOL)
    config = MCConfig(
        vocab_size=23, hidden_size=16, num_hidden_layers=2, num_heads=2, memory="swla", segmentation="log"
    )
    model = MCForCausalLM(config)
    ids = torch.randint(0, 23, (2, 9))
    model(ids, labels=ids).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
