"""``memory_caching(backend="triton")`` equals the PyTorch path (interpreted on the CPU)."""

from __future__ import annotations

import pytest
import torch

from mcrnn.ops import memory_caching
from mcrnn.ops.linear import triton as mc_triton
from mcrnn.ops.memories import memory_inputs

UNSUPPORTED = mc_triton.unsupported_reason(torch.zeros(1), head_dims=(16,))
pytestmark = pytest.mark.skipif(UNSUPPORTED is not None, reason=f"Triton kernels cannot run: {UNSUPPORTED}")


@pytest.mark.parametrize(
    "aggregation,init,memory",
    [
        ("grm", "checkpoint", "linear"),
        ("ssc", "independent", "linear"),
        ("residual", "checkpoint", "swla"),
        ("average", "independent", "swla"),
    ],
)
def test_triton_backend_matches_torch(aggregation, init, memory):
    gen = torch.Generator().manual_seed(0)
    q, k, v, u = (torch.randn(1, 20, 2, 16, generator=gen).requires_grad_() for _ in range(4))
    log_decay = (-0.3 * torch.rand(1, 20, 2, generator=gen)).requires_grad_()
    options = dict(
        segment_size=6,
        aggregation=aggregation,
        init=init,
        top_k=2 if aggregation == "ssc" else None,
        output_cache=True,
    )
    gates = {"log_decay": log_decay}
    if memory == "swla":
        gates.update(
            prev_gate=torch.rand(1, 20, 2, generator=gen), cur_gate=torch.rand(1, 20, 2, generator=gen)
        )
    options["memory"] = memory_inputs(memory, **gates)
    expected, expected_cache = memory_caching(q, k, v, u, backend="torch", **options)
    got, cache = memory_caching(q, k, v, u, backend="triton", **options)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache.cached, expected_cache.cached, atol=1e-5, rtol=1e-5)
    leaves = [q, k, v, u, log_decay]
    grads = torch.autograd.grad(got.square().sum(), leaves, allow_unused=True, materialize_grads=True)
    reference = torch.autograd.grad(
        expected.square().sum(), leaves, allow_unused=True, materialize_grads=True
    )
    for a, b in zip(grads, reference, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4 * b.abs().max().item(), rtol=1e-4)


def test_unsupported_head_dim_falls_back_with_warning():
    q = torch.randn(1, 8, 1, 5)
    with pytest.warns(UserWarning, match="head dim 5"):
        out = memory_caching(q, q, q, segment_size=4, backend="triton")
    torch.testing.assert_close(out, memory_caching(q, q, q, segment_size=4, backend="torch"))
