"""Reads of cached segment states, dense (``grm``/``residual``/``average``) and top-k (``ssc``), in Triton.

For token ``t`` in segment ``s(t)`` and cached states ``M(i)`` [Dk, Dv] (end of segment ``i``):

    dense:   y_t = sum_{i < s(t)} g_{t,i} q_t^T M(i)                       gates g [B, T, H, N]
    sparse:  y_t = sum_j w_{t,j} q_t^T M(idx_{t,j}),  only 0 <= idx_{t,j} < s(t) count
             (other entries, e.g. -1 padding when fewer than k states exist, are ignored)

The sparse form is the dense one with ``g_{t,i} = sum_j w_{t,j} [idx_{t,j} = i]``; a block of
``BT`` queries then loads only the states that at least one of its tokens selected (block-sparse).

Kernels, flash-attention style (one program per query block, a loop over the cached states):

- ``_read_fwd``: ``y``;
- ``_read_bwd_dq``: ``dq_t = sum_i g_{t,i} dy_t M(i)^T`` and the gate gradients
  ``dg_{t,i} = dy_t . (q_t^T M(i))`` (dense) or ``dw_{t,j} = dg_{t,idx_{t,j}}`` (sparse);
- ``_read_bwd_dstates``: one program per cached state ``i``, looping over the query blocks after
  segment ``i``: ``dM(i) = sum_{t: s(t) > i} g_{t,i} q_t dy_t^T``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from mcrnn.ops.linear.triton.utils import (
    autotuned,
    contiguous,
    dot_dtype,
    dot_precision,
    segment_tables,
    time_block,
)


@triton.jit
def _block_tokens(seg_ids, t0, i_b, i_h, T, H: tl.constexpr, BT: tl.constexpr):
    """Rows ``t0 .. t0+BT``: row mask, segment of each row, flat token index ``(b, t, h)``."""
    rows = t0 + tl.arange(0, BT)
    mask = rows < T
    seg = tl.load(seg_ids + rows, mask=mask, other=0)
    return mask, seg, (i_b * T + rows) * H + i_h


@triton.jit
def _selection(
    idx, w, tok, mask, seg, TOPK: tl.constexpr, KS: tl.constexpr, BT: tl.constexpr, SPARSE: tl.constexpr
):
    """Top-k tiles [BT, KS]: selected states (-1 where invalid or not earlier than ``s(t)``), weights."""
    offs_j = tl.arange(0, KS)
    sel_mask = mask[:, None] & (offs_j < TOPK)[None, :]
    if SPARSE:
        b_idx = tl.load(idx + tok[:, None] * TOPK + offs_j[None, :], mask=sel_mask, other=-1)
        b_idx = tl.where(b_idx < seg[:, None], b_idx, -1)
        b_w = tl.load(w + tok[:, None] * TOPK + offs_j[None, :], mask=sel_mask, other=0.0).to(tl.float32)
    else:
        b_idx = tl.full([BT, KS], -1, dtype=tl.int32)
        b_w = tl.zeros([BT, KS], dtype=tl.float32)
    return b_idx, b_w, sel_mask


@triton.jit
def _gate(gates, b_idx, b_w, tok, mask, seg, i, N: tl.constexpr, SPARSE: tl.constexpr):
    """Weight of state ``i`` for every row [BT], the [BT, KS] hits, and whether any row reads ``i``."""
    hits = b_idx == i
    if SPARSE:
        b_g = tl.sum(tl.where(hits, b_w, 0.0), 1)
        read = tl.max(tl.max(hits.to(tl.int32), 1), 0) > 0
    else:
        visible = mask & (seg > i)
        b_g = tl.load(gates + tok * N + i, mask=visible, other=0.0).to(tl.float32)
        read = tl.max(visible.to(tl.int32), 0) > 0
    return b_g, hits, read


@triton.jit
def _read_fwd(
    q, gates, idx, w, states, y, seg_ids, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, N: tl.constexpr, TOPK: tl.constexpr,
    KS: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr, SPARSE: tl.constexpr, DOT: tl.constexpr,
    PREC: tl.constexpr,
):  # fmt: skip
    """``y`` for one block of ``BT`` queries and ``BV`` value columns."""
    i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    mask, seg, tok = _block_tokens(seg_ids, i_t * BT, i_b, i_h, T, H, BT)
    b_idx, b_w, _ = _selection(idx, w, tok, mask, seg, TOPK, KS, BT, SPARSE)
    offs_k = tl.arange(0, K)
    offs_v = i_v * BV + tl.arange(0, BV)
    b_q = tl.load(q + tok[:, None] * K + offs_k[None, :], mask=mask[:, None], other=0.0).to(DOT)
    b_y = tl.zeros([BT, BV], dtype=tl.float32)
    for i in range(0, tl.max(seg, 0)):
        b_g, _, read = _gate(gates, b_idx, b_w, tok, mask, seg, i, N, SPARSE)
        if read:
            b_s = tl.load(states + ((i_b * N + i) * H + i_h) * K * V + offs_k[:, None] * V + offs_v[None, :])
            b_y += b_g[:, None] * tl.dot(b_q, b_s.to(DOT), input_precision=PREC)
    tl.store(y + tok[:, None] * V + offs_v[None, :], b_y.to(y.dtype.element_ty), mask=mask[:, None])


@triton.jit
def _read_bwd_dq(
    q, gates, idx, w, states, dy, dq, dgates, dw, seg_ids, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, N: tl.constexpr, TOPK: tl.constexpr,
    KS: tl.constexpr, BT: tl.constexpr, SPARSE: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """``dq`` and the gate (dense) or top-k weight (sparse) gradients of one query block."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    mask, seg, tok = _block_tokens(seg_ids, i_t * BT, i_b, i_h, T, H, BT)
    b_idx, b_w, sel_mask = _selection(idx, w, tok, mask, seg, TOPK, KS, BT, SPARSE)
    offs_k = tl.arange(0, K)
    offs_v = tl.arange(0, V)
    b_q = tl.load(q + tok[:, None] * K + offs_k[None, :], mask=mask[:, None], other=0.0).to(DOT)
    b_dy = tl.load(dy + tok[:, None] * V + offs_v[None, :], mask=mask[:, None], other=0.0).to(DOT)
    b_dq = tl.zeros([BT, K], dtype=tl.float32)
    b_dw = tl.zeros([BT, KS], dtype=tl.float32)
    for i in range(0, tl.max(seg, 0)):
        b_g, hits, read = _gate(gates, b_idx, b_w, tok, mask, seg, i, N, SPARSE)
        if read:
            b_s = tl.load(states + ((i_b * N + i) * H + i_h) * K * V + offs_k[:, None] * V + offs_v[None, :])
            b_s = b_s.to(DOT)
            b_r = tl.sum(tl.dot(b_q, b_s, input_precision=PREC) * b_dy.to(tl.float32), 1)
            if SPARSE:
                b_dw += tl.where(hits, b_r[:, None], 0.0)
            else:
                tl.store(dgates + tok * N + i, b_r.to(dgates.dtype.element_ty), mask=mask & (seg > i))
            b_dq += b_g[:, None] * tl.dot(b_dy, tl.trans(b_s), input_precision=PREC)
    tl.store(dq + tok[:, None] * K + offs_k[None, :], b_dq.to(dq.dtype.element_ty), mask=mask[:, None])
    if SPARSE:
        ptr = dw + tok[:, None] * TOPK + tl.arange(0, KS)[None, :]
        tl.store(ptr, b_dw.to(dw.dtype.element_ty), mask=sel_mask)


@triton.jit
def _read_bwd_dstates(
    q, gates, idx, w, dy, dstates, seg_ids, offsets, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, N: tl.constexpr, TOPK: tl.constexpr,
    KS: tl.constexpr, BT: tl.constexpr, SPARSE: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """``dM(i)`` for one cached state: a loop over the query blocks of the later segments."""
    i, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    offs_k = tl.arange(0, K)
    offs_v = tl.arange(0, V)
    start = tl.load(offsets + i + 1)
    b_ds = tl.zeros([K, V], dtype=tl.float32)
    for j in range(0, tl.cdiv(T - start, BT)):
        mask, seg, tok = _block_tokens(seg_ids, start + j * BT, i_b, i_h, T, H, BT)
        b_idx, b_w, _ = _selection(idx, w, tok, mask, seg, TOPK, KS, BT, SPARSE)
        b_g, _, read = _gate(gates, b_idx, b_w, tok, mask, seg, i, N, SPARSE)
        if read:
            b_q = tl.load(q + tok[:, None] * K + offs_k[None, :], mask=mask[:, None], other=0.0)
            b_dy = tl.load(dy + tok[:, None] * V + offs_v[None, :], mask=mask[:, None], other=0.0)
            b_q = (b_q.to(tl.float32) * b_g[:, None]).to(DOT)
            b_ds += tl.dot(tl.trans(b_q), b_dy.to(DOT), input_precision=PREC)
    ptr = dstates + ((i_b * N + i) * H + i_h) * K * V + offs_k[:, None] * V + offs_v[None, :]
    tl.store(ptr, b_ds.to(dstates.dtype.element_ty))


_KEY = ["H", "K", "V", "BT", "SPARSE"]
_launch_fwd = autotuned(_read_fwd, _KEY)
_launch_bwd_dq = autotuned(_read_bwd_dq, _KEY)
_launch_bwd_dstates = autotuned(_read_bwd_dstates, _KEY)


class CachedReadFunction(torch.autograd.Function):
    """Autograd wrapper: dense ``gates`` (``idx``, ``w`` None) or sparse ``idx``/``w`` (``gates`` None)."""

    @staticmethod
    def forward(ctx, q, gates, idx, w, states, lengths: tuple[int, ...]):
        batch, seq_len, heads, key_dim = q.shape
        n_seg, value_dim = states.shape[1], states.shape[-1]
        sparse, states_dtype = gates is None, states.dtype
        top_k = idx.shape[-1] if sparse else 1
        block = time_block(max(key_dim, value_dim))
        seg_ids, offsets = segment_tables(lengths, q.device)
        meta = dict(H=heads, K=key_dim, V=value_dim, N=n_seg, TOPK=top_k, KS=triton.next_power_of_2(top_k))
        meta.update(BT=block, SPARSE=sparse, DOT=dot_dtype(q.dtype), PREC=dot_precision(q.dtype))
        # the states feed only tl.dot: 16-bit inputs read a 16-bit copy (half the memory traffic)
        states = states.to(q.dtype) if q.element_size() == 2 else states
        y = q.new_empty(batch, seq_len, heads, value_dim)
        bv = min(value_dim, 64)
        grid = (value_dim // bv, triton.cdiv(seq_len, block), batch * heads)
        _launch_fwd(grid, q, gates, idx, w, states, y, seg_ids, seq_len, BV=bv, **meta)
        ctx.save_for_backward(q, gates, idx, w, states, seg_ids, offsets)
        ctx.meta, ctx.states_dtype = meta, states_dtype
        return y

    @staticmethod
    def backward(ctx, dy):
        q, gates, idx, w, states, seg_ids, offsets = ctx.saved_tensors
        batch, seq_len, heads, _ = q.shape
        meta, dy = ctx.meta, dy.contiguous()
        dq = torch.empty_like(q)
        dgates = None if gates is None else torch.zeros_like(gates)
        dw = None if w is None else torch.zeros_like(w)
        grid = (triton.cdiv(seq_len, meta["BT"]), batch * heads)
        _launch_bwd_dq(grid, q, gates, idx, w, states, dy, dq, dgates, dw, seg_ids, seq_len, **meta)
        dstates = torch.empty_like(states, dtype=ctx.states_dtype)
        grid = (meta["N"], batch * heads)
        _launch_bwd_dstates(grid, q, gates, idx, w, dy, dstates, seg_ids, offsets, seq_len, **meta)
        return dq, dgates, None, dw, dstates, None


def _check_states(q: torch.Tensor, states: torch.Tensor, lengths: Sequence[int]) -> tuple[int, ...]:
    batch, seq_len, heads, key_dim = q.shape
    lengths = tuple(int(n) for n in lengths)
    if sum(lengths) != seq_len:
        raise ValueError(f"lengths must sum to T={seq_len}, got {sum(lengths)}")
    if states.dim() != 5 or tuple(states.shape[:4]) != (batch, len(lengths), heads, key_dim):
        raise ValueError(f"states must be [B, N, H, Dk, Dv] with B, N, H, Dk = "
                         f"{batch, len(lengths), heads, key_dim}, got {tuple(states.shape)}")  # fmt: skip
    return lengths


def cached_read(
    q: torch.Tensor, gates: torch.Tensor, states: torch.Tensor, lengths: Sequence[int]
) -> torch.Tensor:
    """``y_t = sum_{i < s(t)} gates[b, t, h, i] * q_t^T states[b, i, h]`` (Triton kernels).

    Args:
        q: [B, T, H, Dk]; gates: [B, T, H, N] (entries ``i >= s(t)`` are ignored and get zero
            gradient); states: [B, N, H, Dk, Dv]; lengths: N segment lengths summing to T.

    Returns:
        ``y`` [B, T, H, Dv] in the dtype of ``q``; differentiable in ``q``, ``gates``, ``states``.
    """
    lengths = _check_states(q, states, lengths)
    expected = (*q.shape[:3], len(lengths))
    if tuple(gates.shape) != expected:
        raise ValueError(f"gates must be [B, T, H, N]={expected}, got {tuple(gates.shape)}")
    q, gates, states = contiguous(q, gates, states)
    return CachedReadFunction.apply(q, gates, None, None, states, lengths)


def ssc_read(
    q: torch.Tensor,
    indices: torch.Tensor,
    weights: torch.Tensor,
    states: torch.Tensor,
    lengths: Sequence[int],
) -> torch.Tensor:
    """``y_t = sum_j weights[b, t, h, j] * q_t^T states[b, indices[b, t, h, j], h]`` (Triton kernels).

    Only entries with ``0 <= indices < s(t)`` are read; the others (e.g. ``-1`` padding) add
    nothing and get zero weight gradient. Repeated indices add up.

    Args:
        q: [B, T, H, Dk]; indices: [B, T, H, k] integer; weights: [B, T, H, k];
        states: [B, N, H, Dk, Dv]; lengths: N segment lengths summing to T.

    Returns:
        ``y`` [B, T, H, Dv] in the dtype of ``q``; differentiable in ``q``, ``weights``, ``states``.
    """
    lengths = _check_states(q, states, lengths)
    if tuple(indices.shape[:3]) != tuple(q.shape[:3]) or indices.shape != weights.shape:
        raise ValueError(f"indices and weights must be [B, T, H, k] with B, T, H = {tuple(q.shape[:3])}, "
                         f"got {tuple(indices.shape)} and {tuple(weights.shape)}")  # fmt: skip
    q, weights, states = contiguous(q, weights, states)
    indices = indices.to(torch.int32).contiguous()
    return CachedReadFunction.apply(q, None, indices, weights, states, lengths)
