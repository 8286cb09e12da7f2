"""Deep memories (dla, titans) under MC: the chunk path and decoding against the naive definition."""

from __future__ import annotations

import itertools

import pytest
import torch
from op_inputs import mc_flat

from mcrnn.ops.deep import layer_shapes, network

B, H, D = 2, 2, 4


def make_inputs(
    memory: str,
    seq_len: int = 20,
    depth: int = 2,
    expansion: int = 2,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> dict:
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=dtype)

    q, k, u = (torch.nn.functional.normalize(rand(B, seq_len, H, D), dim=-1) for _ in range(3))
    v = rand(B, seq_len, H, D)
    gate = torch.rand(B, seq_len, H, generator=gen, dtype=dtype)
    return dict(
        q=q,
        k=k,
        v=v,
        u=u,
        memory=memory,
        params=[0.5 * rand(H, o, i) for o, i in layer_shapes(D, D, depth, expansion)],
        eta=0.2 * torch.rand(B, seq_len, H, generator=gen, dtype=dtype),
        alpha=0.8 + 0.2 * gate,
        momentum=0.9 * torch.rand(B, seq_len, H, generator=gen, dtype=dtype) if memory == "titans" else None,
    )


def run(inputs: dict, **options) -> torch.Tensor:
    return mc_flat(**inputs, **options)


CASES = list(
    itertools.product(
        ("dla", "titans"), ("residual", "grm", "soup", "ssc", "average"), ("checkpoint", "independent")
    )
)


@pytest.mark.parametrize("memory,aggregation,init", CASES)
def test_chunk_equals_naive(memory: str, aggregation: str, init: str) -> None:
    inputs = make_inputs(memory, seq_len=22)  # segments 8, 8, 6: the last one ends in a partial chunk
    options = dict(
        segment_size=8,
        chunk_size=4,
        aggregation=aggregation,
        init=init,
        top_k=1 if aggregation == "ssc" else None,
    )
    expected = run(inputs, backend="naive", **options)
    torch.testing.assert_close(run(inputs, **options), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("depth", [1, 3])
def test_chunk_equals_naive_other_depths(depth: int) -> None:
    inputs = make_inputs("titans", depth=depth)
    options = dict(segment_lengths=[4, 12, 4], chunk_size=4, aggregation="soup")
    torch.testing.assert_close(
        run(inputs, **options), run(inputs, backend="naive", **options), rtol=1e-10, atol=1e-10
    )


GRAD_CASES = [
    ("titans", "grm", "checkpoint"),
    ("dla", "soup", "independent"),
    ("titans", "ssc", "checkpoint"),
    ("titans", "soup", "independent"),
    ("dla", "residual", "checkpoint"),
]


@pytest.mark.parametrize(
    "memory,aggregation,init,depth",
    [(*case, 2) for case in GRAD_CASES]
    + [
        (memory, "grm", init, depth)
        for memory in ("dla", "titans")
        for init, depth in (("independent", 1), ("checkpoint", 3))
    ],
)
def test_gradients_equal_naive(memory: str, aggregation: str, init: str, depth: int) -> None:
    """Every input's gradient (the chunk scan's hand-written backward included) equals autograd's
    through the naive definition; depths 1 and 3 cover the matrix memory and a middle layer."""
    inputs = make_inputs(memory, seq_len=13, depth=depth)
    leaves = {name: x.clone().requires_grad_() for name, x in inputs.items() if isinstance(x, torch.Tensor)}
    params = [w.clone().requires_grad_() for w in inputs["params"]]
    options = dict(
        memory=memory,
        params=params,
        segment_size=4,
        chunk_size=2,
        aggregation=aggregation,
        init=init,
        top_k=1 if aggregation == "ssc" else None,
    )
    weight = torch.randn(B, 13, H, D, dtype=torch.float64)
    grads = []
    for backend in ("naive", "torch"):
        out = mc_flat(**leaves, **options, backend=backend)
        inputs_ = [*leaves.values(), *params]
        found = torch.autograd.grad((out * weight).sum(), inputs_, allow_unused=True)  # u unused by residual
        grads.append([torch.zeros_like(x) if g is None else g for x, g in zip(inputs_, found, strict=True)])
    names = [*leaves, *(f"params[{i}]" for i in range(len(params)))]
    for name, fast, ref in zip(names, grads[1], grads[0], strict=True):
        torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-10, msg=lambda m, n=name: f"{n}: {m}")


def test_soup_differs_from_grm_for_deep_and_equals_for_depth_one() -> None:
    options = dict(segment_size=4, chunk_size=2, aggregation="grm")
    deep = make_inputs("titans", seq_len=12)
    assert not torch.allclose(
        run(deep, **options), run(deep, **{**options, "aggregation": "soup"}), atol=1e-6
    )
    flat = make_inputs("titans", seq_len=12, depth=1)
    torch.testing.assert_close(
        run(flat, **options), run(flat, **{**options, "aggregation": "soup"}), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("memory", ["dla", "titans"])
def test_ssc_with_enough_top_k_equals_grm(memory: str) -> None:
    inputs = make_inputs(memory, seq_len=16)
    options = dict(segment_size=4, chunk_size=2)  # N = 4 segments
    torch.testing.assert_close(
        run(inputs, aggregation="ssc", top_k=3, **options),
        run(inputs, aggregation="grm", **options),
        rtol=1e-12,
        atol=1e-12,
    )


@pytest.mark.parametrize("aggregation", ["residual", "grm", "soup", "ssc", "average"])
def test_one_segment_is_the_base_memory(aggregation: str) -> None:
    """§7.1 on the chunk path, against the naive base memory (no segments, so no aggregation code)."""
    inputs = make_inputs("titans", seq_len=12)
    base = run(inputs, chunk_size=4, backend="naive")
    for segment_size in (12, 16):
        one = run(inputs, segment_size=segment_size, chunk_size=4, aggregation=aggregation, top_k=1)
        torch.testing.assert_close(one, base, rtol=1e-10, atol=1e-10)


def test_depth_one_dla_is_gated_linear_attention() -> None:
    inputs = make_inputs("dla", seq_len=10, depth=1)
    state = inputs["params"][0].unsqueeze(0).expand(B, -1, -1, -1)  # [B, H, Dv, Dk]
    expected = []
    for t in range(10):
        write = inputs["v"][:, t, :, :, None] * inputs["k"][:, t, :, None, :]
        state = inputs["alpha"][:, t, :, None, None] * state + inputs["eta"][:, t, :, None, None] * write
        expected.append((state @ inputs["q"][:, t, :, :, None]).squeeze(-1))
    torch.testing.assert_close(run(inputs, chunk_size=5), torch.stack(expected, 1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "memory,aggregation,init", [c for c in CASES if c[2] == "checkpoint" or c[0] == "titans"]
)
def test_decoding_equals_parallel(memory: str, aggregation: str, init: str) -> None:
    inputs = make_inputs(memory, seq_len=14)
    options = dict(
        segment_size=4,
        chunk_size=2,
        aggregation=aggregation,
        init=init,
        top_k=1 if aggregation == "ssc" else None,
    )
    full = run(inputs, **options)
    prefill = 5  # mid-chunk and mid-segment
    head = {
        n: x[:, :prefill] if isinstance(x, torch.Tensor) and x.dim() >= 3 else x for n, x in inputs.items()
    }
    outs = [run(head, output_cache=True, **options)]
    cache = outs[0][1]
    outs[0] = outs[0][0]
    for t in range(prefill, 14):
        step = {
            n: x[:, t : t + 1] if isinstance(x, torch.Tensor) and x.dim() >= 3 else x
            for n, x in inputs.items()
        }
        out, cache = run(step, cache=cache, output_cache=True, **options)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("aggregation", ["grm", "soup", "ssc"])
def test_causal(aggregation: str) -> None:
    inputs = make_inputs("titans", seq_len=16)
    options = dict(segment_size=8, chunk_size=4, aggregation=aggregation, top_k=1)
    before = run(inputs, **options)
    cut = 9  # inside a chunk
    changed = {n: x.clone() if isinstance(x, torch.Tensor) else x for n, x in inputs.items()}
    for name in ("q", "k", "v", "u", "eta", "alpha", "momentum"):
        changed[name][:, cut + 1 :] = torch.rand_like(changed[name][:, cut + 1 :])
    after = run(changed, **options)
    torch.testing.assert_close(after[:, : cut + 1], before[:, : cut + 1], rtol=0, atol=0)
    assert not torch.allclose(after[:, cut + 1 :], before[:, cut + 1 :])


@pytest.mark.parametrize("memory", ["dla", "titans"])
def test_update_lowers_inner_loss_on_its_chunk(memory: str) -> None:
    inputs = make_inputs(memory, seq_len=4)
    inputs["eta"] = torch.full_like(inputs["eta"], 0.05)
    inputs["alpha"] = torch.ones_like(inputs["alpha"])
    _, cache = run(inputs, chunk_size=4, output_cache=True)
    k, v = inputs["k"].transpose(1, 2), inputs["v"].transpose(1, 2)

    def loss(weights: list[torch.Tensor]) -> torch.Tensor:
        return network.inner_loss(memory, network.forward(weights, k), v).sum((-1,))

    start = [w.unsqueeze(0).expand(B, -1, -1, -1) for w in inputs["params"]]
    assert bool((loss(cache.weights) < loss(start)).all())


def test_nan_in_gives_nan_out() -> None:
    inputs = make_inputs("titans", seq_len=8)
    inputs["q"] = inputs["q"].clone()
    inputs["q"][0, 5, 0, 0] = float("nan")
    out = run(inputs, segment_size=4, chunk_size=2, aggregation="grm")
    assert out[0, 5, 0].isnan().all() and not out[1].isnan().any() and not out[0, :5].isnan().any()
    inputs["k"] = inputs["k"].clone()
    inputs["k"][1, 2, 1, 0] = float("nan")
    out = run(inputs, segment_size=4, chunk_size=2, aggregation="ssc", top_k=1)
    assert out[1, 3:].isnan().any()


@pytest.mark.parametrize("memory", ["dla", "titans"])
@pytest.mark.parametrize("aggregation", ["grm", "soup"])
def test_updates_finite_for_large_inputs(memory: str, aggregation: str) -> None:
    """Normalised keys and values, step sizes <= 0.01 (the layer's bound), queries of norm 1e3."""
    inputs = make_inputs(memory, seq_len=128, dtype=torch.float32)
    inputs["q"], inputs["u"] = 1e3 * inputs["q"], 1e3 * inputs["u"]
    inputs["v"] = torch.nn.functional.normalize(inputs["v"], dim=-1)
    inputs["eta"] = torch.full_like(inputs["eta"], 0.01)
    inputs["alpha"] = torch.ones_like(inputs["alpha"])
    out, cache = run(inputs, segment_size=32, chunk_size=32, aggregation=aggregation, output_cache=True)
    assert out.isfinite().all()
    assert all(w.isfinite().all() for w in cache.weights)


def test_bad_inputs() -> None:
    inputs = make_inputs("titans", seq_len=8)
    with pytest.raises(ValueError, match="segment_size"):
        run(inputs, segment_size=6, chunk_size=4)
    with pytest.raises(ValueError, match="segment_lengths"):
        run(inputs, segment_lengths=[2, 6], chunk_size=4)
    with pytest.raises(ValueError, match="chunk_size"):
        run(inputs, chunk_size=0)
    with pytest.raises(ValueError, match="depth"):
        layer_shapes(D, D, 0, 4)
    with pytest.raises(ValueError, match="expansion"):
        layer_shapes(D, D, 2, 0)
    with pytest.raises(ValueError, match="momentum"):
        run({**inputs, "momentum": None})
    with pytest.raises(ValueError, match="params"):
        run({**inputs, "params": [w[:1] for w in inputs["params"]]})
    with pytest.raises(ValueError, match="memory"):
        run({**inputs, "memory": "lstm"})


@pytest.mark.parametrize("memory", ["dla", "titans"])
def test_base_memory_equals_naive_with_gradients(memory: str) -> None:
    inputs = make_inputs(memory, seq_len=10)  # one segment, chunks of 4: the last one is partial
    leaves = {name: x.clone().requires_grad_() for name, x in inputs.items() if isinstance(x, torch.Tensor)}
    leaves.pop("u")  # unused with one segment
    params = [w.clone().requires_grad_() for w in inputs["params"]]
    grads = []
    for backend in ("naive", "torch"):
        out = mc_flat(**leaves, memory=memory, params=params, chunk_size=4, backend=backend)
        grads.append(torch.autograd.grad(out.pow(2).sum(), [*leaves.values(), *params]))
    for fast, ref in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("memory", ["dla", "titans"])
def test_public_op_rejects_foreign_inputs(memory: str) -> None:
    inputs = make_inputs(memory)
    options = dict(segment_size=8, chunk_size=4, aggregation="ssc", top_k=1)
    with pytest.raises(ValueError, match=f"memory='{memory}' takes .* not \\['log_decay'\\]"):
        mc_flat(**inputs, **options, log_decay=torch.zeros(B, 20, H, dtype=torch.float64))
    with pytest.raises(ValueError, match="needs \\['params'\\]"):
        mc_flat(**{**inputs, "params": None}, **options)
    linear = {n: inputs[n] for n in "qkvu"}
    with pytest.raises(ValueError, match=r"memory=.linear. takes .* not \[.eta.\]"):
        mc_flat(**linear, eta=inputs["eta"])
