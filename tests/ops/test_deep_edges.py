"""Deep memories (dla, titans) at the edges of their documented ranges, against the naive token loop.

The chunk path (and decoding) must equal the float64 definition (``backend="naive"``, inner gradients
by autograd) for outputs and every gradient where the gates reach the ends of their ranges
(``eta = 0``, ``alpha = 1``, ``beta = 0`` and ``1``), where gates are tiny (1e-6, 1e-12, on some tokens
only), and where ``Dk != Dv`` (a depth-1 memory; deeper ones have a residual and need ``Dk == Dv``).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from op_inputs import mc_flat

from mcrnn.ops.deep import layer_shapes
from mcrnn.ops.deep.coefficients import GateProducts

B, H, T = 2, 2, 13
AGGREGATIONS = ("residual", "grm", "soup", "ssc", "average")
OPTIONS = dict(segment_size=8, chunk_size=4)  # segments 8, 5; the last chunk is partial


def make_inputs(
    memory: str, depth: int = 2, key_dim: int = 4, value_dim: int = 4, edge: str = "", seed: int = 0
) -> dict:
    """Random float64 inputs of the op; ``edge = "name=value"`` sets that gate on every third token
    (``"name=value all"``: on every token)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(B, T, H, generator=gen, dtype=torch.float64)

    q, k, u = (torch.nn.functional.normalize(rand(B, T, H, key_dim), dim=-1) for _ in range(3))
    inputs = dict(
        q=q,
        k=k,
        v=rand(B, T, H, value_dim),
        u=u,
        memory=memory,
        params=[0.5 * rand(H, o, i) for o, i in layer_shapes(key_dim, value_dim, depth, 2)],
        eta=uniform(0.0, 0.2),
        alpha=uniform(0.8, 1.0),
        momentum=uniform(0.0, 0.9) if memory == "titans" else None,
    )
    if edge:
        name, value = edge.removesuffix(" all").split("=")
        some = torch.zeros(B, T, H, dtype=torch.bool)
        some[:, :: 1 if edge.endswith(" all") else 3] = True
        inputs[name] = torch.where(some, float(value), inputs[name])
    return inputs


def outputs_and_gradients(inputs: dict, backend: str, dtype: torch.dtype = torch.float64, **options) -> dict:
    """The output and the gradient of a fixed random projection of it w.r.t. every tensor input."""
    leaves = {n: x.to(dtype).requires_grad_() for n, x in inputs.items() if isinstance(x, torch.Tensor)}
    params = [w.to(dtype).requires_grad_() for w in inputs["params"]]
    out = mc_flat(**{**inputs, **leaves, "params": params}, **options, backend=backend)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    tensors = [*leaves.values(), *params]
    grads = torch.autograd.grad((out * weight.to(dtype)).sum(), tensors, allow_unused=True)
    names = [*leaves, *(f"params[{i}]" for i in range(len(params)))]
    found = {"output": out.detach()}
    found.update(
        {n: torch.zeros_like(x) if g is None else g for n, x, g in zip(names, tensors, grads, strict=True)}
    )
    return found


def assert_equal_to_naive(inputs: dict, rtol: float = 1e-10, atol: float = 1e-10, **options) -> None:
    expected = outputs_and_gradients(inputs, "naive", **options)
    found = outputs_and_gradients(inputs, "torch", **options)
    for name, ref in expected.items():
        torch.testing.assert_close(found[name], ref, rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize(
    "memory,aggregation,dims",
    list(itertools.product(("dla", "titans"), AGGREGATIONS, ((4, 3), (3, 5)))),
)
def test_key_dim_differs_from_value_dim(memory: str, aggregation: str, dims: tuple[int, int]) -> None:
    """Depth 1 maps Dk -> Dv (``layer_shapes`` gives ``[(Dv, Dk)]``): chunk path == naive, gradients too."""
    inputs = make_inputs(memory, depth=1, key_dim=dims[0], value_dim=dims[1])
    assert_equal_to_naive(inputs, **OPTIONS, aggregation=aggregation, top_k=1)


@pytest.mark.parametrize("memory", ["dla", "titans"])
def test_key_dim_differs_from_value_dim_one_segment_and_decoding(memory: str) -> None:
    inputs = make_inputs(memory, depth=1, key_dim=4, value_dim=3)
    assert_equal_to_naive(inputs, chunk_size=4, aggregation="soup")
    full = mc_flat(**inputs, **OPTIONS)
    prefill = 5  # mid-chunk
    outs, cache = mc_flat(**_tokens(inputs, 0, prefill), **OPTIONS, output_cache=True)
    outs = [outs]
    for t in range(prefill, T):
        out, cache = mc_flat(**_tokens(inputs, t, t + 1), **OPTIONS, cache=cache, output_cache=True)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-12, atol=1e-12)


def test_key_dim_differs_from_value_dim_needs_depth_one() -> None:
    with pytest.raises(ValueError, match="Dk == Dv"):
        layer_shapes(4, 3, 2, 2)
    inputs = make_inputs("dla", depth=1, key_dim=4, value_dim=3)
    deeper = make_inputs("dla", depth=2, key_dim=4, value_dim=4)["params"]
    with pytest.raises(ValueError, match="Dk=4 to Dv=3"):
        mc_flat(**{**inputs, "params": deeper}, **OPTIONS)


def _tokens(inputs: dict, start: int, stop: int) -> dict:
    """Tokens ``start:stop`` of every per-token input."""
    return {
        n: x[:, start:stop] if isinstance(x, torch.Tensor) and x.dim() >= 3 else x for n, x in inputs.items()
    }


TITANS_EDGES = (
    "momentum=0", "momentum=1", "momentum=1e-6", "momentum=1e-12", "momentum=0 all", "momentum=1 all"
)
EDGES = [
    (memory, edge)
    for memory in ("dla", "titans")
    for edge in ("", "eta=0", "eta=0 all", "alpha=1", "alpha=1 all", "alpha=1e-6", "alpha=1e-12")
    + (TITANS_EDGES if memory == "titans" else ())
]


@pytest.mark.parametrize("memory,edge", EDGES)
def test_gate_edges_equal_naive(memory: str, edge: str) -> None:
    """Gates at the ends of their ranges and tiny gates (on every third token, or all): outputs and
    every gradient at 1e-10 (measured <= 5e-14). Before the gate products were differentiated without
    dividing by a gate, beta = 0 gave dL/dbeta = 0 there (error 0.31) and gates of 1e-12 errors of
    8e-6 (dla, dL/dalpha) to 1.2e-4 (titans, dL/dbeta), as ``|a - b| / (1 + |b|)``."""
    inputs = make_inputs(memory, edge=edge)
    assert_equal_to_naive(inputs, **OPTIONS, aggregation="grm")


@pytest.mark.parametrize("memory,depth", [("dla", 1), ("titans", 1), ("titans", 3)])
def test_tiny_and_zero_gates_other_depths(memory: str, depth: int) -> None:
    inputs = make_inputs(memory, depth=depth, edge="alpha=1e-12")
    if memory == "titans":
        inputs["momentum"] = torch.where(torch.arange(T)[:, None] % 3 == 1, 0.0, inputs["momentum"])
    assert_equal_to_naive(inputs, **OPTIONS, aggregation="soup", init="independent")


#: float32 chunk path vs the float64 definition, ``|a - b| <= FLOAT32_BOUND (1 + |b|)`` for the
#: output and every gradient. Measured over EDGES and Dk != Dv (grm and soup): at most 2.9e-5 (titans,
#: beta = 1 on every token, dL/dparams[0]; the naive loop in float32 itself: 4.2e-5), typically 1e-6.
#: Before the gate products were exact (same measure): 4.8e3 (dla, alpha = 1e-12, dL/dalpha), 3.0e4
#: (titans, beta = 1e-12, dL/dbeta), 0.31 at beta = 0 (dL/dbeta = 0 there, in float64 too).
FLOAT32_BOUND = 1e-4


@pytest.mark.parametrize("memory,edge", EDGES + [("dla", "Dk != Dv"), ("titans", "Dk != Dv")])
def test_float32_within_measured_bound(memory: str, edge: str) -> None:
    if edge == "Dk != Dv":
        inputs, aggregation = make_inputs(memory, depth=1, key_dim=4, value_dim=3), "soup"
    else:
        inputs, aggregation = make_inputs(memory, edge=edge), "grm"
    expected = outputs_and_gradients(inputs, "naive", **OPTIONS, aggregation=aggregation)
    found = outputs_and_gradients(inputs, "torch", torch.float32, **OPTIONS, aggregation=aggregation)
    for name, ref in expected.items():
        assert found[name].dtype == torch.float32
        torch.testing.assert_close(
            found[name].double(),
            ref,
            rtol=FLOAT32_BOUND,
            atol=FLOAT32_BOUND,
            msg=lambda m, n=name: f"{n}: {m}",
        )


def random_mask(seed: int = 3) -> torch.Tensor:
    """A [B, T] mask with masked tokens inside chunks, at chunk starts and at the end."""
    mask = torch.rand(B, T, generator=torch.Generator().manual_seed(seed)) > 0.4
    mask[:, 0], mask[0, -1] = False, False
    return mask


@pytest.mark.parametrize(
    "memory,aggregation,init",
    [(m, a, "checkpoint") for m in ("dla", "titans") for a in ("grm", "soup", "residual")]
    + [("titans", "ssc", "independent")],
)
def test_mask_equals_naive(memory: str, aggregation: str, init: str) -> None:
    """A masked token is an identity step (no write, no retention, no momentum change) in the chunk
    path as in the definition, anywhere in the sequence; outputs and gradients at 1e-10."""
    inputs = make_inputs(memory)
    assert_equal_to_naive(inputs, **OPTIONS, aggregation=aggregation, init=init, top_k=1, mask=random_mask())


@pytest.mark.parametrize("memory", ["dla", "titans"])
@pytest.mark.parametrize("init", ["checkpoint", "independent"])
def test_right_padded_prefill_state_equals_unpadded(memory: str, init: str) -> None:
    """After a right-padded prefill each row's state (weights, momentum, cached
    states) is the one after its real tokens alone: row 1 has 9 real tokens of 13 (segments of 8,
    chunks of 4), so its padding crosses a chunk boundary; garbage gates on the padding change nothing."""
    inputs = make_inputs(memory)
    lengths = [T, 9]
    mask = torch.arange(T) < torch.tensor(lengths)[:, None]
    options = dict(**OPTIONS, aggregation="grm", init=init)
    _, padded = mc_flat(**inputs, **options, mask=mask, output_cache=True)
    for row, n in enumerate(lengths):
        alone = {
            name: x[row : row + 1, :n] if isinstance(x, torch.Tensor) and x.dim() >= 3 else x
            for name, x in inputs.items()
        }
        _, expected = mc_flat(**alone, **options, output_cache=True)
        states = {"weights": (padded.weights, expected.weights)}
        if memory == "titans":
            states["momentum"] = (padded.momentum, expected.momentum)
        for i, (found, ref) in enumerate(zip(padded.cached, expected.cached, strict=True)):
            states[f"cached[{i}]"] = (found, ref)
        for name, (found, ref) in states.items():
            for l, (w, w_ref) in enumerate(zip(found, ref, strict=True)):
                torch.testing.assert_close(
                    w[row], w_ref[0], rtol=1e-10, atol=1e-10, msg=lambda m, k=f"{name}[{l}]": f"{k}: {m}"
                )


@pytest.mark.parametrize("memory,aggregation", [("dla", "grm"), ("titans", "soup"), ("titans", "ssc")])
def test_mask_decoding_equals_parallel(memory: str, aggregation: str) -> None:
    inputs = make_inputs(memory)
    mask = random_mask()
    options = dict(**OPTIONS, aggregation=aggregation, top_k=1)
    full = mc_flat(**inputs, **options, mask=mask)
    prefill = 6  # mid-chunk
    out, cache = mc_flat(
        **_tokens(inputs, 0, prefill), **options, mask=mask[:, :prefill], output_cache=True
    )
    outs = [out]
    for t in range(prefill, T):
        out, cache = mc_flat(
            **_tokens(inputs, t, t + 1), **options, mask=mask[:, t : t + 1], cache=cache, output_cache=True
        )
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-10, atol=1e-10)


def test_bad_mask() -> None:
    inputs = make_inputs("titans")
    with pytest.raises(ValueError, match="mask must be a bool"):
        mc_flat(**inputs, mask=torch.ones(B, T))
    with pytest.raises(ValueError, match="mask must be a bool"):
        mc_flat(**inputs, mask=torch.ones(B, T - 1, dtype=torch.bool))


def test_public_op_forwards_the_mask() -> None:
    inputs, mask = make_inputs("titans"), random_mask()
    torch.testing.assert_close(
        mc_flat(**inputs, **OPTIONS, mask=mask),
        mc_flat(**inputs, **OPTIONS, mask=mask),
        rtol=0,
        atol=0,
    )
    assert not torch.allclose(
        mc_flat(**inputs, **OPTIONS, mask=mask), mc_flat(**inputs, **OPTIONS)
    )
    with pytest.raises(ValueError, match=r"takes .* not \['mask'\]"):
        mc_flat(inputs["q"], inputs["k"], inputs["v"], mask=mask)


def test_gate_products_backward_matches_numerical_gradients_at_zero_and_tiny_gates() -> None:
    """:class:`GateProducts` (prefix products and range products of a gate) against central
    differences, with exact zeros, 1e-12 and ones among the gates (products are polynomials in the
    gates, so differences across 0 are exact up to rounding)."""
    gen = torch.Generator().manual_seed(5)
    gates = torch.rand(2, 3, 6, generator=gen, dtype=torch.float64)
    gates[0, :, 1], gates[1, :, 3], gates[0, 0, 4], gates[1, 2, 0] = 0.0, 1e-12, 1.0, 0.0
    torch.autograd.gradcheck(GateProducts.apply, (gates.requires_grad_(),))
    prefix, decay = GateProducts.apply(gates.detach())
    torch.testing.assert_close(prefix, gates.detach().cumprod(-1), rtol=1e-15, atol=0)
    for t, j in ((5, 0), (5, 5), (3, 1), (2, 4)):
        expected = (
            gates.detach()[..., j + 1 : t + 1].prod(-1) if j <= t else torch.zeros(2, 3, dtype=torch.float64)
        )
        torch.testing.assert_close(decay[..., t, j], expected, rtol=1e-15, atol=0)
