"""Deep memories (dla, titans) with the log (Fenwick) segmentation: the parallel path and decoding
against the token-loop definition (DESIGN.md §5), in float64, gradients included."""

from __future__ import annotations

import itertools

import pytest
import torch
from op_inputs import mc_flat

from mcrnn.layers import MemoryCachingAttention
from mcrnn.models import MCConfig, MCForCausalLM
from mcrnn.ops.deep import DeepFenwickCache, layer_shapes
from mcrnn.ops.deep.log_recurrent import run_starts

B, H, DK = 2, 2, 3
AGGREGATIONS = ("residual", "grm", "soup", "ssc", "average")


def make_inputs(
    memory: str, seq_len: int, depth: int, seed: int = 0, dtype: torch.dtype = torch.float64
) -> dict:
    """Random inputs (never zeros); ``Dv != Dk`` for the depth-1 (matrix) memory."""
    gen = torch.Generator().manual_seed(seed)
    value_dim = DK + 2 if depth == 1 else DK

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=dtype)

    def unit(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen, dtype=dtype)

    q, k, u = (torch.nn.functional.normalize(rand(B, seq_len, H, DK), dim=-1) for _ in range(3))
    return dict(
        q=q,
        k=k,
        v=rand(B, seq_len, H, value_dim),
        u=u,
        params=[0.5 * rand(H, o, i) for o, i in layer_shapes(DK, value_dim, depth, 2)],
        eta=0.05 + 0.15 * unit(B, seq_len, H),
        alpha=0.8 + 0.2 * unit(B, seq_len, H),
        momentum=0.9 * unit(B, seq_len, H) if memory == "titans" else None,
    )


def options(memory: str, aggregation: str, init: str, chunk_size: int) -> dict:
    return dict(
        memory=memory,
        segmentation="log",
        aggregation=aggregation,
        init=init,
        top_k=1 if aggregation == "ssc" else None,
        chunk_size=chunk_size,
    )


def time_slice(inputs: dict, part: slice) -> dict:
    return {n: x[:, part] if isinstance(x, torch.Tensor) and n != "params" else x for n, x in inputs.items()}


def outputs_and_gradients(inputs: dict, backend: str, **opts) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The output and the gradient of a random projection of it w.r.t. every tensor input."""
    leaves = {n: x.clone().requires_grad_() for n, x in inputs.items() if isinstance(x, torch.Tensor)}
    params = [w.clone().requires_grad_() for w in inputs["params"]]
    out = mc_flat(**leaves, params=params, backend=backend, **opts)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    names = [*leaves, *(f"params[{i}]" for i in range(len(params)))]
    tensors = [*leaves.values(), *params]
    found = torch.autograd.grad((out * weight).sum(), tensors, allow_unused=True)  # u unused by residual
    grads = {
        n: torch.zeros_like(x) if g is None else g for n, x, g in zip(names, tensors, found, strict=True)
    }
    return out, grads


def assert_fast_equals_definition(inputs: dict, **opts) -> None:
    ref, ref_grads = outputs_and_gradients(inputs, "naive", **opts)
    out, grads = outputs_and_gradients(inputs, "torch", **opts)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for name, grad in grads.items():
        torch.testing.assert_close(
            grad, ref_grads[name], rtol=1e-9, atol=1e-10, msg=lambda m, n=name: f"{n}: {m}"
        )


@pytest.mark.parametrize(
    "memory,aggregation,init,depth",
    list(itertools.product(("dla", "titans"), AGGREGATIONS, ("checkpoint", "independent"), (1, 2))),
)
def test_parallel_equals_definition_with_gradients(
    memory: str, aggregation: str, init: str, depth: int
) -> None:
    """T = 13 with chunk 4: levels 0-1 are chunk levels, 2-3 block levels; the last chunk is partial."""
    inputs = make_inputs(memory, 13, depth)
    assert_fast_equals_definition(inputs, **options(memory, aggregation, init, chunk_size=4))


@pytest.mark.parametrize(
    "memory,init", list(itertools.product(("dla", "titans"), ("checkpoint", "independent")))
)
@pytest.mark.parametrize("aggregation,chunk_size", [("grm", 8), ("soup", 2), ("ssc", 1), ("residual", 64)])
def test_parallel_equals_definition_long(memory: str, init: str, aggregation: str, chunk_size: int) -> None:
    """T = 37 (37 -> 32, 4, 1): from one-token chunks (block levels only) to a chunk longer than T."""
    inputs = make_inputs(memory, 37, depth=2, seed=2)
    assert_fast_equals_definition(inputs, **options(memory, aggregation, init, chunk_size))


@pytest.mark.parametrize("memory,init", [("dla", "independent"), ("titans", "checkpoint")])
def test_sum_pooling_matches_definition(memory: str, init: str) -> None:
    inputs = make_inputs(memory, 21, depth=2, seed=8)
    opts = {**options(memory, "grm", init, chunk_size=4), "pooling": "sum"}
    out = mc_flat(**inputs, **opts)
    torch.testing.assert_close(out, mc_flat(**inputs, backend="naive", **opts), rtol=1e-10, atol=1e-10)
    assert not torch.allclose(out, mc_flat(**inputs, **{**opts, "pooling": "mean"}))


@pytest.mark.parametrize("memory", ["dla", "titans"])
def test_masked_tokens_match_definition(memory: str) -> None:
    inputs = make_inputs(memory, 13, depth=2, seed=3)
    mask = torch.rand(B, 13, generator=torch.Generator().manual_seed(4)) > 0.3
    for init in ("checkpoint", "independent"):
        opts = options(memory, "grm", init, chunk_size=4)
        torch.testing.assert_close(
            mc_flat(**inputs, mask=mask, **opts),
            mc_flat(**inputs, mask=mask, backend="naive", **opts),
            rtol=1e-10,
            atol=1e-10,
        )


@pytest.mark.parametrize("memory,aggregation,init", [
    ("dla", "grm", "checkpoint"), ("titans", "grm", "independent"), ("titans", "soup", "checkpoint"),
    ("dla", "ssc", "independent"), ("titans", "average", "independent"), ("dla", "residual", "checkpoint"),
])
@pytest.mark.parametrize("prefill", [1, 6, 16])
def test_decoding_equals_parallel(memory: str, aggregation: str, init: str, prefill: int) -> None:
    """Prefill (the parallel path's cache) then token-by-token decoding; 16 + 21 tokens crosses the
    merges into the buckets of 32 and 4."""
    seq_len = 37
    inputs = make_inputs(memory, seq_len, depth=2, seed=5)
    opts = options(memory, aggregation, init, chunk_size=4)
    full = mc_flat(**inputs, **opts)
    out, cache = mc_flat(**time_slice(inputs, slice(0, prefill)), output_cache=True, **opts)
    assert isinstance(cache, DeepFenwickCache) and cache.position == prefill
    outs = [out]
    for t in range(prefill, seq_len):
        out, cache = mc_flat(**time_slice(inputs, slice(t, t + 1)), memory=memory, cache=cache,
                                    output_cache=True)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("init", ["checkpoint", "independent"])
def test_masked_decoding_equals_parallel(init: str) -> None:
    inputs = make_inputs("titans", 19, depth=2, seed=9)
    inputs["mask"] = torch.rand(B, 19, generator=torch.Generator().manual_seed(10)) > 0.3
    opts = options("titans", "grm", init, chunk_size=4)
    full = mc_flat(**inputs, **opts)
    out, cache = mc_flat(**time_slice(inputs, slice(0, 7)), output_cache=True, **opts)
    outs = [out]
    for t in range(7, 19):
        out, cache = mc_flat(**time_slice(inputs, slice(t, t + 1)), memory="titans", cache=cache,
                                    output_cache=True)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-10, atol=1e-10)


def test_decoding_keeps_the_cache_passed_in_and_reorders() -> None:
    inputs = make_inputs("titans", 9, depth=2)
    opts = options("titans", "grm", "independent", chunk_size=2)
    _, cache = mc_flat(**time_slice(inputs, slice(0, 8)), output_cache=True, **opts)
    step = time_slice(inputs, slice(8, 9))
    first, _ = mc_flat(**step, memory="titans", cache=cache, output_cache=True)
    again, _ = mc_flat(**step, memory="titans", cache=cache, output_cache=True)
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    flipped = cache.reorder(torch.tensor([1, 0]))
    swapped = {n: x.flip(0) if isinstance(x, torch.Tensor) and n != "params" else x for n, x in step.items()}
    out, _ = mc_flat(**swapped, memory="titans", cache=flipped, output_cache=True)
    torch.testing.assert_close(out, first.flip(0), rtol=0, atol=0)


def test_run_starts_are_the_blocks_a_token_opens_or_extends() -> None:
    assert run_starts(37, "checkpoint") == [0]
    assert run_starts(37, "independent") == [0, 32, 36]  # 37 = 0b100101: bits 1, 3, 4 and 6.. clear
    assert run_starts(8, "independent") == [0, 8]


@pytest.mark.parametrize(
    "memory,init", list(itertools.product(("dla", "titans"), ("checkpoint", "independent")))
)
def test_prefix_outputs_never_change_as_the_sequence_grows(memory: str, init: str) -> None:
    inputs = make_inputs(memory, 37, depth=2, seed=6)
    opts = options(memory, "soup", init, chunk_size=4)
    full = mc_flat(**inputs, **opts)
    for length in (5, 16, 23):
        prefix = mc_flat(**time_slice(inputs, slice(0, length)), **opts)
        torch.testing.assert_close(prefix, full[:, :length], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "memory,init", list(itertools.product(("dla", "titans"), ("checkpoint", "independent")))
)
def test_float32_close_to_float64(memory: str, init: str) -> None:
    """Measured: max |o32 - o64| / max |o64| = 1.3e-7 (dla) to 3.1e-7 (titans) at T = 200, chunk 16;
    bound 2e-6."""
    inputs = make_inputs(memory, 200, depth=2, seed=7)
    opts = options(memory, "grm", init, chunk_size=16)
    exact = mc_flat(**inputs, **opts)
    single = {n: x.float() if isinstance(x, torch.Tensor) else x for n, x in inputs.items()}
    single["params"] = [w.float() for w in inputs["params"]]
    out = mc_flat(**single, **opts)
    assert out.dtype == torch.float32
    assert ((out.double() - exact).abs().max() / exact.abs().max()).item() < 2e-6


@pytest.mark.parametrize("init", ["checkpoint", "independent"])
def test_nan_reaches_only_later_tokens_of_its_row(init: str) -> None:
    inputs = make_inputs("titans", 13, depth=2, seed=11)
    opts = options("titans", "grm", init, chunk_size=4)
    clean = mc_flat(**inputs, **opts)
    inputs["k"] = inputs["k"].clone()
    inputs["k"][1, 6, 0, 0] = float("nan")
    out = mc_flat(**inputs, **opts)  # the definition's outputs (a chunk would spread the NaN)
    torch.testing.assert_close(out[0], clean[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[1, :6], clean[1, :6], rtol=1e-12, atol=1e-12)
    assert out[1, 6:].isnan().any()


def test_chunk_must_be_a_power_of_two() -> None:
    inputs = make_inputs("dla", 12, depth=1)
    with pytest.raises(ValueError, match="chunk_size must be a power of two for segmentation='log'"):
        mc_flat(**inputs, **options("dla", "grm", "checkpoint", chunk_size=6))


@pytest.mark.parametrize("memory", ["dla", "titans"])
def test_layer_forward_backward_and_decoding(memory: str) -> None:
    torch.manual_seed(0)
    layer = MemoryCachingAttention(
        16, 2, memory=memory, segmentation="log", aggregation="grm", chunk_size=4, memory_expansion=2
    ).double()
    x = torch.randn(2, 11, 16, dtype=torch.float64, requires_grad=True)
    full, _ = layer(x)
    full.pow(2).sum().backward()
    assert x.grad.isfinite().all() and x.grad.abs().sum() > 0
    assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in layer.deep.weights)
    with torch.no_grad():
        out, cache = layer(x[:, :5], use_cache=True)
        outs = [out]
        for t in range(5, 11):
            out, cache = layer(x[:, t : t + 1], cache=cache, use_cache=True)
            outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 1), full.detach(), rtol=1e-10, atol=1e-10)


def test_model_forward_backward_and_generation() -> None:
    torch.manual_seed(0)
    config = MCConfig(vocab_size=37, hidden_size=32, num_hidden_layers=2, num_heads=2, chunk_size=4,
                      memory="titans", segmentation="log", aggregation="grm", memory_expansion=2)
    model = MCForCausalLM(config)
    ids = torch.randint(1, 37, (2, 13))
    model(ids, labels=ids).loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters())
    model.eval()
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        first = model(ids[:, :6], use_cache=True)
        rest = model(ids[:, 6:], cache=first.cache, use_cache=True).logits
    torch.testing.assert_close(torch.cat([first.logits, rest], 1), full, rtol=1e-4, atol=1e-5)
