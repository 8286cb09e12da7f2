"""The deep-memory chunk scan's hand-written backward against numerical derivatives (float64).

The chunk path's tests compare it with the naive definition through the outputs a loss reaches in
practice; here every output of :func:`chunk_scan` (the fused read, the final and last-start states
that a decoding cache keeps, the cached states, the per-chunk states and factors) gets a random
weight, so each one's adjoint is checked, for both memories, depths 1-3, checkpoint and reset
(inputs scaled so that values stay O(1) and central differences stay accurate).
"""

from __future__ import annotations

import itertools

import pytest
import torch

from mcrnn.ops.deep import layer_shapes
from mcrnn.ops.deep.read import ChunkCoefficients
from mcrnn.ops.deep.scan import ChunkEnd, chunk_scan

N_CHUNKS, B, H, C, D = 3, 1, 2, 2, 3


def _inputs(memory: str, depth: int, seed: int) -> tuple[list[torch.Tensor], dict]:
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (scale * torch.randn(*shape, generator=gen, dtype=torch.float64)).requires_grad_()

    def unit(*shape: int) -> torch.Tensor:
        return (0.5 + 0.5 * torch.rand(*shape, generator=gen, dtype=torch.float64)).requires_grad_()

    initial = [rand(B, H, o, i, scale=0.3) for o, i in layer_shapes(D, D, depth, 2)]
    keys, values, query = (rand(N_CHUNKS, B, H, C, D, scale=0.5) for _ in range(3))
    titans = memory == "titans"
    ends = ChunkEnd(
        unit(N_CHUNKS, B, H),
        rand(N_CHUNKS, B, H, C, scale=0.3),
        unit(N_CHUNKS, B, H) if titans else None,
        unit(N_CHUNKS, B, H) if titans else None,
        rand(N_CHUNKS, B, H, C, scale=0.3) if titans else None,
    )
    coef = ChunkCoefficients(
        retain=unit(N_CHUNKS, B, H, C),
        carry=unit(N_CHUNKS, B, H, C) if titans else None,
        mix=rand(N_CHUNKS, B, H, C, C, scale=0.3),
    )
    leaves = [*initial, keys, values, *ends.tensors(), query, *coef.tensors()]
    return leaves, {
        "initial": initial,
        "keys": keys,
        "values": values,
        "ends": ends,
        "query": query,
        "coef": coef,
    }


@pytest.mark.parametrize(
    "memory,depth,fused,reset",
    list(itertools.product(("dla", "titans"), (1, 2, 3), (True, False), (False, True))),
)
def test_scan_backward_matches_numerical_gradients(memory: str, depth: int, fused: bool, reset: bool) -> None:
    leaves, parts = _inputs(memory, depth, seed=depth)
    n_leaves = len(leaves)

    def loss(*tensors: torch.Tensor) -> torch.Tensor:
        rebuilt = _rebuild(parts, tensors[:n_leaves])
        read = (rebuilt["query"], rebuilt["coef"]) if fused else None
        result = chunk_scan(
            memory, rebuilt["initial"], rebuilt["keys"], rebuilt["values"], rebuilt["ends"], [2], reset, read
        )
        outputs = [result.output, *result.final_weights, *result.last_start, *result.cached]
        outputs += result.final_momentum or []
        if not fused:
            outputs += [*result.weights, *(result.momentum or []), *result.inputs[1:], *result.deltas]
        gen = torch.Generator().manual_seed(7)
        return sum(
            (x * torch.randn(x.shape, generator=gen, dtype=x.dtype)).sum() for x in outputs if x is not None
        )

    assert torch.autograd.gradcheck(loss, tuple(leaves), eps=1e-6, atol=1e-7, rtol=1e-6)


def _rebuild(parts: dict, tensors: tuple[torch.Tensor, ...]) -> dict:
    """``parts`` with its tensors replaced, in the order ``_inputs`` listed them."""
    it = iter(tensors)
    ends, coef = parts["ends"], parts["coef"]
    initial = [next(it) for _ in parts["initial"]]
    keys, values = next(it), next(it)
    end_tensors = [next(it) for _ in ends.tensors()]
    query = next(it)
    coef_tensors = [next(it) for _ in coef.tensors()]
    return {
        "initial": initial,
        "keys": keys,
        "values": values,
        "ends": ChunkEnd(*end_tensors),
        "query": query,
        "coef": ChunkCoefficients(*coef_tensors),
    }


def test_cache_points_are_checked() -> None:
    _, parts = _inputs("dla", 2, seed=0)
    with pytest.raises(ValueError, match="cache_points"):
        chunk_scan("dla", parts["initial"], parts["keys"], parts["values"], parts["ends"], [0], False)
    with pytest.raises(ValueError, match="cache_points"):
        chunk_scan("dla", parts["initial"], parts["keys"], parts["values"], parts["ends"], [2, 1], False)
