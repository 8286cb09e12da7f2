"""Reads of cached segment states, dense (``grm``/``residual``/``average``) and top-k (``ssc``), in Triton.

For token ``t`` in segment ``s(t)`` and cached states ``M(i)`` [Dk, Dv] (end of segment ``i``):

    dense:   y_t = sum_{i < s(t)} g_{t,i} q_t^T M(i)                       gates g [B, T, H, N]
    sparse:  y_t = sum_j w_{t,j} q_t^T M(idx_{t,j}),  only 0 <= idx_{t,j} < s(t) count
             (other entries, e.g. -1 padding when fewer than k states exist, are ignored)

The sparse form is the dense one with ``g_{t,i} = sum_j w_{t,j} [idx_{t,j} = i]``; a block of
``BT`` queries then loads only the states that at least one of its tokens selected (block-sparse).
A third gate mode, ``g_{t,i} = exp(<u_t, c_i> - lse_t)`` recomputed from router queries, segment
keys and a log-sum-exp, serves the fused ``grm`` read of :mod:`~mcrnn.ops.linear.triton.grm`. The
constexpr ``MODE`` selects the gate: 0 = DENSE, 1 = SPARSE, 2 = SOFTMAX (literals in the kernels,
which may only read constexpr globals).

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

DENSE, SPARSE, SOFTMAX = 0, 1, 2


@triton.jit
def block_tokens(seg_ids, t0, i_b, i_h, T, H: tl.constexpr, BT: tl.constexpr):
    """Rows ``t0 .. t0+BT``: row mask, segment of each row, flat token index ``(b, t, h)``."""
    rows = t0 + tl.arange(0, BT)
    mask = rows < T
    seg = tl.load(seg_ids + rows, mask=mask, other=0)
    return mask, seg, (i_b * T + rows) * H + i_h


@triton.jit
def _block_gating(
    idx, w, u, lse, delta, tok, mask, seg,
    K: tl.constexpr, TOPK: tl.constexpr, KS: tl.constexpr, BT: tl.constexpr, MODE: tl.constexpr,
):
    """Per-block gating inputs, loaded once.

    SPARSE: top-k tiles [BT, KS] (selected states, -1 where invalid or not earlier than ``s(t)``;
    weights). SOFTMAX: router queries ``u`` [BT, K], ``lse`` [BT] and ``delta = dy . y`` [BT].
    Unused outputs are zeros.
    """
    offs_j = tl.arange(0, KS)
    sel_mask = mask[:, None] & (offs_j < TOPK)[None, :]
    b_idx = tl.full([BT, KS], -1, dtype=tl.int32)
    b_w = tl.zeros([BT, KS], dtype=tl.float32)
    b_u = tl.zeros([BT, K], dtype=tl.float32)
    b_lse = tl.zeros([BT], dtype=tl.float32)
    b_delta = tl.zeros([BT], dtype=tl.float32)
    if MODE == 1:
        b_idx = tl.load(idx + tok[:, None] * TOPK + offs_j[None, :], mask=sel_mask, other=-1)
        b_idx = tl.where(b_idx < seg[:, None], b_idx, -1)
        b_w = tl.load(w + tok[:, None] * TOPK + offs_j[None, :], mask=sel_mask, other=0.0).to(tl.float32)
    if MODE == 2:
        offs_k = tl.arange(0, K)
        b_u = tl.load(u + tok[:, None] * K + offs_k[None, :], mask=mask[:, None], other=0.0).to(tl.float32)
        b_lse = tl.load(lse + tok, mask=mask, other=0.0)
        if delta is not None:
            b_delta = tl.load(delta + tok, mask=mask, other=0.0)
    return b_idx, b_w, sel_mask, b_u, b_lse, b_delta


@triton.jit
def _gate(
    gates, contexts, b_idx, b_w, b_u, b_lse, tok, mask, seg, i, i_b, i_h,
    H: tl.constexpr, K: tl.constexpr, N: tl.constexpr, MODE: tl.constexpr,
):
    """Weight of state ``i`` for every row [BT], the [BT, KS] top-k hits, the rows that read ``i``
    [BT] (visible, or selected under SPARSE), whether any row does, and (SOFTMAX) the router key
    ``c_i`` [K]: ``g_{t,i} = exp(<u_t, c_i> - lse_t)``."""
    hits = b_idx == i
    b_c = tl.zeros([K], dtype=tl.float32)
    readers = mask & (seg > i)
    if MODE == 1:
        b_g = tl.sum(tl.where(hits, b_w, 0.0), 1)
        readers = tl.max(hits.to(tl.int32), 1) > 0
    elif MODE == 2:
        b_c = tl.load(contexts + ((i_b * N + i) * H + i_h) * K + tl.arange(0, K)).to(tl.float32)
        logit = tl.sum(b_u * b_c[None, :], 1)
        b_g = tl.exp(tl.where(readers, logit - b_lse, float("-inf")))
    else:
        b_g = tl.load(gates + tok * N + i, mask=readers, other=0.0).to(tl.float32)
    return b_g, hits, readers, tl.max(readers.to(tl.int32), 0) > 0, b_c


@triton.jit
def _read_fwd(
    q, gates, idx, w, u, contexts, lse, states, y, seg_ids, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, N: tl.constexpr, TOPK: tl.constexpr,
    KS: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr, MODE: tl.constexpr, DOT: tl.constexpr,
    PREC: tl.constexpr,
):
    """``y`` for one block of ``BT`` queries and ``BV`` value columns."""
    i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    mask, seg, tok = block_tokens(seg_ids, i_t * BT, i_b, i_h, T, H, BT)
    b_idx, b_w, _, b_u, b_lse, _ = _block_gating(idx, w, u, lse, None, tok, mask, seg, K, TOPK, KS, BT, MODE)
    offs_k = tl.arange(0, K)
    offs_v = i_v * BV + tl.arange(0, BV)
    b_q = tl.load(q + tok[:, None] * K + offs_k[None, :], mask=mask[:, None], other=0.0).to(DOT)
    b_y = tl.zeros([BT, BV], dtype=tl.float32)
    for i in range(0, tl.max(seg, 0)):
        b_g, _, readers, read, _ = _gate(
            gates, contexts, b_idx, b_w, b_u, b_lse, tok, mask, seg, i, i_b, i_h, H, K, N, MODE
        )
        if read:
            b_s = tl.load(states + ((i_b * N + i) * H + i_h) * K * V + offs_k[:, None] * V + offs_v[None, :])
            # select the rows that read state i: a non-finite state must not reach the others
            b_r = tl.dot(b_q, b_s.to(DOT), input_precision=PREC)
            b_y += tl.where(readers[:, None], b_g[:, None] * b_r, 0.0)
    tl.store(y + tok[:, None] * V + offs_v[None, :], b_y.to(y.dtype.element_ty), mask=mask[:, None])


@triton.jit
def _read_bwd_dq(
    q, gates, idx, w, u, contexts, lse, delta, states, dy, dq, dgates, dw, du, seg_ids, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, N: tl.constexpr, TOPK: tl.constexpr,
    KS: tl.constexpr, BT: tl.constexpr, MODE: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
):
    """``dq`` and the gating gradients of one query block: ``dgates`` (DENSE), ``dw`` (SPARSE), or
    ``du_t = sum_i g_{t,i} (r_{t,i} - delta_t) c_i`` (SOFTMAX), with ``r_{t,i} = dy_t . q_t^T M(i)``."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    mask, seg, tok = block_tokens(seg_ids, i_t * BT, i_b, i_h, T, H, BT)
    b_idx, b_w, sel_mask, b_u, b_lse, b_delta = _block_gating(
        idx, w, u, lse, delta, tok, mask, seg, K, TOPK, KS, BT, MODE
    )
    offs_k = tl.arange(0, K)
    offs_v = tl.arange(0, V)
    b_q = tl.load(q + tok[:, None] * K + offs_k[None, :], mask=mask[:, None], other=0.0).to(DOT)
    b_dy = tl.load(dy + tok[:, None] * V + offs_v[None, :], mask=mask[:, None], other=0.0).to(DOT)
    b_dq = tl.zeros([BT, K], dtype=tl.float32)
    b_dw = tl.zeros([BT, KS], dtype=tl.float32)
    b_du = tl.zeros([BT, K], dtype=tl.float32)
    for i in range(0, tl.max(seg, 0)):
        b_g, hits, _, read, b_c = _gate(
            gates, contexts, b_idx, b_w, b_u, b_lse, tok, mask, seg, i, i_b, i_h, H, K, N, MODE
        )
        if read:
            b_s = tl.load(states + ((i_b * N + i) * H + i_h) * K * V + offs_k[:, None] * V + offs_v[None, :])
            b_s = b_s.to(DOT)
            b_r = tl.sum(tl.dot(b_q, b_s, input_precision=PREC) * b_dy.to(tl.float32), 1)
            if MODE == 1:
                b_dw += tl.where(hits, b_r[:, None], 0.0)
            elif MODE == 2:
                b_du += (b_g * (b_r - b_delta))[:, None] * b_c[None, :]
            else:
                tl.store(dgates + tok * N + i, b_r.to(dgates.dtype.element_ty), mask=mask & (seg > i))
            b_dq += b_g[:, None] * tl.dot(b_dy, tl.trans(b_s), input_precision=PREC)
    tl.store(dq + tok[:, None] * K + offs_k[None, :], b_dq.to(dq.dtype.element_ty), mask=mask[:, None])
    if MODE == 1:
        ptr = dw + tok[:, None] * TOPK + tl.arange(0, KS)[None, :]
        tl.store(ptr, b_dw.to(dw.dtype.element_ty), mask=sel_mask)
    if MODE == 2:
        tl.store(du + tok[:, None] * K + offs_k[None, :], b_du.to(du.dtype.element_ty), mask=mask[:, None])


@triton.jit
def _read_bwd_dstates(
    q, gates, idx, w, u, contexts, lse, delta, states, dy, dstates, dcontexts, seg_ids, offsets, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, N: tl.constexpr, TOPK: tl.constexpr,
    KS: tl.constexpr, BT: tl.constexpr, MODE: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
):
    """``dM(i)`` for one cached state, a loop over the query blocks of the later segments; with
    SOFTMAX also ``dc_i = sum_t g_{t,i} (r_{t,i} - delta_t) u_t``."""
    i, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    offs_k = tl.arange(0, K)
    offs_v = tl.arange(0, V)
    state_ptr = ((i_b * N + i) * H + i_h) * K * V + offs_k[:, None] * V + offs_v[None, :]
    if MODE == 2:
        b_s = tl.load(states + state_ptr).to(DOT)
    start = tl.load(offsets + i + 1)
    b_ds = tl.zeros([K, V], dtype=tl.float32)
    b_dc = tl.zeros([K], dtype=tl.float32)
    for j in range(0, tl.cdiv(T - start, BT)):
        mask, seg, tok = block_tokens(seg_ids, start + j * BT, i_b, i_h, T, H, BT)
        b_idx, b_w, _, b_u, b_lse, b_delta = _block_gating(
            idx, w, u, lse, delta, tok, mask, seg, K, TOPK, KS, BT, MODE
        )
        b_g, _, _, read, _ = _gate(
            gates, contexts, b_idx, b_w, b_u, b_lse, tok, mask, seg, i, i_b, i_h, H, K, N, MODE
        )
        if read:
            b_q = tl.load(q + tok[:, None] * K + offs_k[None, :], mask=mask[:, None], other=0.0).to(DOT)
            b_dy = tl.load(dy + tok[:, None] * V + offs_v[None, :], mask=mask[:, None], other=0.0).to(DOT)
            b_qg = (b_q.to(tl.float32) * b_g[:, None]).to(DOT)
            b_ds += tl.dot(tl.trans(b_qg), b_dy, input_precision=PREC)
            if MODE == 2:
                b_r = tl.sum(tl.dot(b_q, b_s, input_precision=PREC) * b_dy.to(tl.float32), 1)
                b_dc += tl.sum((b_g * (b_r - b_delta))[:, None] * b_u, 0)
    tl.store(dstates + state_ptr, b_ds.to(dstates.dtype.element_ty))
    if MODE == 2:
        ptr = dcontexts + ((i_b * N + i) * H + i_h) * K + offs_k
        tl.store(ptr, b_dc.to(dcontexts.dtype.element_ty))


_KEY = ["H", "K", "V", "BT", "MODE"]
_launch_fwd = autotuned(_read_fwd, _KEY)
_launch_bwd_dq = autotuned(_read_bwd_dq, _KEY)
_launch_bwd_dstates = autotuned(_read_bwd_dstates, _KEY)


def read_meta(q: torch.Tensor, states: torch.Tensor, mode: int, top_k: int = 1) -> dict:
    """Constexpr arguments shared by the three read kernels."""
    meta = dict(H=q.shape[2], K=q.shape[3], V=states.shape[-1], N=states.shape[1], MODE=mode)
    meta.update(TOPK=top_k, KS=triton.next_power_of_2(top_k), BT=time_block(max(meta["K"], meta["V"])))
    return dict(meta, DOT=dot_dtype(q.dtype), PREC=dot_precision(q.dtype))


def dot_operand(states: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The states as the read kernels load them: a 16-bit copy for 16-bit ``q`` (they only feed
    ``tl.dot``, whose operands are 16-bit then anyway; half the memory traffic), else as they are."""
    return states.to(q.dtype) if q.element_size() == 2 else states


def launch_read(q, states, seg_ids, meta, gates=None, idx=None, w=None, u=None, contexts=None, lse=None):
    """``y`` [B, T, H, Dv] (dtype of ``q``) of the read in ``meta["MODE"]``."""
    batch, seq_len, heads, _ = q.shape
    value_dim = meta["V"]
    y = q.new_empty(batch, seq_len, heads, value_dim)
    bv = min(value_dim, 64)
    grid = (value_dim // bv, triton.cdiv(seq_len, meta["BT"]), batch * heads)
    _launch_fwd(grid, q, gates, idx, w, u, contexts, lse, states, y, seg_ids, seq_len, BV=bv, **meta)
    return y


def launch_read_bwd(
    q, states, dy, seg_ids, offsets, meta, dstates_dtype, gates=None, idx=None, w=None, u=None,
    contexts=None, lse=None, delta=None,
):
    """``dq, dgates, dw, du, dstates, dcontexts`` of the read (``None`` where the mode has none)."""
    batch, seq_len, heads, _ = q.shape
    mode = meta["MODE"]
    dq = torch.empty_like(q)
    dgates = torch.zeros_like(gates) if mode == DENSE else None
    dw = torch.zeros_like(w) if mode == SPARSE else None
    du = torch.empty_like(u) if mode == SOFTMAX else None
    grid = (triton.cdiv(seq_len, meta["BT"]), batch * heads)
    _launch_bwd_dq(
        grid, q, gates, idx, w, u, contexts, lse, delta, states, dy, dq, dgates, dw, du, seg_ids, seq_len,
        **meta,
    )
    dstates = torch.empty_like(states, dtype=dstates_dtype)
    dcontexts = torch.empty_like(contexts) if mode == SOFTMAX else None
    grid = (meta["N"], batch * heads)
    _launch_bwd_dstates(
        grid, q, gates, idx, w, u, contexts, lse, delta, states, dy, dstates, dcontexts, seg_ids, offsets,
        seq_len, **meta,
    )
    return dq, dgates, dw, du, dstates, dcontexts


class CachedReadFunction(torch.autograd.Function):
    """Autograd wrapper: dense ``gates`` (``idx``, ``w`` None) or sparse ``idx``/``w`` (``gates`` None)."""

    @staticmethod
    def forward(ctx, q, gates, idx, w, states, lengths: tuple[int, ...]):
        mode = SPARSE if gates is None else DENSE
        meta = read_meta(q, states, mode, idx.shape[-1] if mode == SPARSE else 1)
        seg_ids, offsets = segment_tables(lengths, q.device)
        ctx.states_dtype = states.dtype
        states = dot_operand(states, q)
        y = launch_read(q, states, seg_ids, meta, gates=gates, idx=idx, w=w)
        ctx.save_for_backward(q, gates, idx, w, states, seg_ids, offsets)
        ctx.meta = meta
        return y

    @staticmethod
    def backward(ctx, dy):
        q, gates, idx, w, states, seg_ids, offsets = ctx.saved_tensors
        dy = dy.contiguous()
        dq, dgates, dw, _, dstates, _ = launch_read_bwd(
            q, states, dy, seg_ids, offsets, ctx.meta, ctx.states_dtype, gates=gates, idx=idx, w=w
        )
        return dq, dgates, None, dw, dstates, None


def check_states(q: torch.Tensor, states: torch.Tensor, lengths: Sequence[int]) -> tuple[int, ...]:
    batch, seq_len, heads, key_dim = q.shape
    lengths = tuple(int(n) for n in lengths)
    if sum(lengths) != seq_len:
        raise ValueError(f"lengths must sum to T={seq_len}, got {sum(lengths)}")
    if states.dim() != 5 or tuple(states.shape[:4]) != (batch, len(lengths), heads, key_dim):
        raise ValueError(f"states must be [B, N, H, Dk, Dv] with B, N, H, Dk = "
                         f"{batch, len(lengths), heads, key_dim}, got {tuple(states.shape)}")
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
    lengths = check_states(q, states, lengths)
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
    lengths = check_states(q, states, lengths)
    if tuple(indices.shape[:3]) != tuple(q.shape[:3]) or indices.shape != weights.shape:
        raise ValueError(f"indices and weights must be [B, T, H, k] with B, T, H = {tuple(q.shape[:3])}, "
                         f"got {tuple(indices.shape)} and {tuple(weights.shape)}")
    q, weights, states = contiguous(q, weights, states)
    indices = indices.to(torch.int32).contiguous()
    return CachedReadFunction.apply(q, None, indices, weights, states, lengths)
