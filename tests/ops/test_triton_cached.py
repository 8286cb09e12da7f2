"""Triton ``cached_read`` / ``ssc_read`` against plain-torch references (interpreter on the CPU)."""

from __future__ import annotations

import pytest
import torch
from triton_kernels import require_triton_kernels

triton = require_triton_kernels()  # before any import of mcrnn's kernels

from mcrnn.ops.linear.triton import cached_read, ssc_read  # noqa: E402


def _segments(lengths, device):
    counts = torch.tensor(lengths, device=device)
    return torch.repeat_interleave(torch.arange(len(lengths), device=device), counts)


def reference_dense(q, gates, states, lengths):
    """``y_t = sum_{i < s(t)} g_{t,i} q_t^T M(i)``."""
    seg = _segments(lengths, q.device)
    visible = torch.arange(len(lengths), device=q.device).view(1, -1) < seg.view(-1, 1)  # [T, N]
    reads = torch.einsum("bthk,bnhkv->bthnv", q, states)
    return torch.einsum("bthn,bthnv->bthv", gates * visible[None, :, None, :], reads)


def dense_from_topk(indices, weights, lengths):
    """``g_{t,i} = sum_j w_{t,j} [idx_{t,j} = i]`` over the valid ``0 <= idx < s(t)``."""
    seg = _segments(lengths, indices.device).view(1, -1, 1, 1)
    valid = (indices >= 0) & (indices < seg)
    gates = weights.new_zeros(*weights.shape[:3], len(lengths))
    return gates.scatter_add(-1, indices.clamp(min=0).long(), weights * valid)


def _inputs(lengths, heads=2, key_dim=16, value_dim=32, batch=2, dtype=torch.float32, device="cpu"):
    gen = torch.Generator().manual_seed(0)
    seq_len, n_seg = sum(lengths), len(lengths)
    q = torch.randn(batch, seq_len, heads, key_dim, generator=gen)
    gates = torch.rand(batch, seq_len, heads, n_seg, generator=gen)
    states = torch.randn(batch, n_seg, heads, key_dim, value_dim, generator=gen) / key_dim**0.5
    return [x.to(device, dtype) for x in (q, gates, states)]


def _grads(out, ref_out, leaves, ref_leaves, atol=2e-4):
    dy = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
    out.backward(dy)
    ref_out.backward(dy.to(ref_out.dtype))
    for mine, ref in zip(leaves, ref_leaves, strict=True):
        torch.testing.assert_close(mine.grad.to(ref.dtype), ref.grad, atol=atol, rtol=atol)


@pytest.mark.parametrize("lengths", [[5, 20, 1, 3], [1] * 7, [16, 16]])
def test_dense_read_and_grads(lengths):
    """Segments of 1, across and at the 16-token query block (interpreter), T not a block multiple."""
    inputs = _inputs(lengths)
    leaves = [x.clone().requires_grad_() for x in inputs]
    ref_leaves = [x.double().requires_grad_() for x in inputs]
    out = cached_read(*leaves, lengths)
    ref = reference_dense(*ref_leaves, lengths)
    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=1e-4)
    _grads(out, ref, leaves, ref_leaves)


def test_dense_non_contiguous_bf16():
    lengths = [3, 9, 6]
    q, gates, states = _inputs(lengths, heads=1, key_dim=32, value_dim=16, batch=1)
    ref = reference_dense(q.double(), gates.double(), states.double(), lengths)
    wide = torch.cat([gates, gates], -1)[..., : len(lengths)]
    assert not wide.is_contiguous()
    torch.testing.assert_close(cached_read(q, wide, states, lengths).double(), ref, atol=1e-4, rtol=1e-4)
    out = cached_read(q.bfloat16(), gates.bfloat16(), states, lengths)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), ref, atol=6e-2, rtol=6e-2)


def _topk_inputs(lengths, top_k, seed=2):
    gen = torch.Generator().manual_seed(seed)
    q, _, states = _inputs(lengths)
    seg = _segments(lengths, "cpu").view(1, -1, 1, 1)
    # random earlier segments, -1 padding and out-of-range entries mixed in, duplicates allowed
    raw = torch.randint(-1, len(lengths), (*q.shape[:3], top_k), generator=gen)
    indices = torch.where(torch.rand(raw.shape, generator=gen) < 0.8, raw % seg.clamp(min=1), raw)
    weights = torch.rand(raw.shape, generator=gen)
    return q, indices, weights, states


@pytest.mark.parametrize(("lengths", "top_k"), [([5, 20, 1, 3], 2), ([2] * 9, 3), ([1] * 6, 1)])
def test_ssc_read_and_grads(lengths, top_k):
    q, indices, weights, states = _topk_inputs(lengths, top_k)
    leaves = [x.clone().requires_grad_() for x in (q, weights, states)]
    ref_leaves = [x.double().requires_grad_() for x in (q, weights, states)]
    out = ssc_read(leaves[0], indices, leaves[1], leaves[2], lengths)
    ref_gates = dense_from_topk(indices, ref_leaves[1], lengths)
    ref = reference_dense(ref_leaves[0], ref_gates, ref_leaves[2], lengths)
    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=1e-4)
    _grads(out, ref, leaves, ref_leaves)


def test_ssc_with_every_state_equals_dense():
    """Selecting all earlier segments (k >= N-1) reads exactly what the dense kernel reads."""
    lengths = [4, 7, 5, 2]
    q, gates, states = _inputs(lengths, batch=1)
    indices = torch.arange(len(lengths)).expand(*q.shape[:3], -1).contiguous()
    sparse = ssc_read(q, indices, gates, states, lengths)
    torch.testing.assert_close(sparse, cached_read(q, gates, states, lengths), atol=1e-5, rtol=1e-5)


def test_bad_inputs():
    lengths = [4, 4]
    q, gates, states = _inputs(lengths, batch=1)
    with pytest.raises(ValueError, match="one device"):
        cached_read(q, gates.to("meta"), states, lengths)
    with pytest.raises(ValueError, match="states"):
        cached_read(q, gates, states[:, :1], lengths)
    with pytest.raises(ValueError, match="sum"):
        cached_read(q, gates, states, [4, 3])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_full_size_bf16():
    """T=4096 in segments of 256, H=4, D=64, bf16: dense and top-4 reads and grads vs float32 torch."""
    lengths = [256] * 16
    q, gates, states = _inputs(lengths, heads=4, key_dim=64, value_dim=64, device="cuda")
    later = torch.arange(16, device="cuda") >= _segments(lengths, "cuda").view(1, -1, 1, 1)
    top = torch.topk(gates - 9.0 * later, 4)
    cases = [
        (cached_read, (q, gates, states), lambda q, g, s: reference_dense(q, g, s, lengths)),
        (
            ssc_read,
            (q, top.indices, top.values, states),
            lambda q, i, w, s: reference_dense(q, dense_from_topk(i, w, lengths), s, lengths),
        ),
    ]
    for fn, args, ref_fn in cases:
        leaves = [a.bfloat16().requires_grad_() if a.is_floating_point() else a for a in args]
        refs = [a.clone().requires_grad_() if a.is_floating_point() else a for a in args]
        out, ref = fn(*leaves, lengths), ref_fn(*refs)
        assert (out.float() - ref).norm() / ref.norm() < 1e-2
        dy = torch.randn_like(ref)
        out.backward(dy.bfloat16())
        ref.backward(dy)
        for mine, r in zip(leaves, refs, strict=True):
            if r.is_floating_point():
                assert (mine.grad.float() - r.grad).norm() / r.grad.norm() < 2e-2
