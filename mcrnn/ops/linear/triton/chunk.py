"""Chunked decayed linear attention with per-segment states, in Triton.

Per batch element and head, with ``a_t = exp(g_t)`` (``g = log_decay <= 0``, or 0 without decay):

    M_t = a_t M_{t-1} + k_t v_t^T,    o_t = q_t^T M_t,    states[i] = M_{end of segment i}

``init="checkpoint"`` carries ``M`` across segments; ``init="independent"`` restarts it from zero
at every segment start. Chunks of at most ``BT`` tokens never straddle a segment (see
:func:`~mcrnn.ops.linear.triton.utils.chunk_table`). Inside chunk ``c`` with state ``H_c`` before
it (after the reset) and chunk-local cumulative log decay ``G_t``:

    o_t   = e^{G_t} q_t^T H_c + sum_{s <= t in c} e^{G_t - G_s} (q_t . k_s) v_s
    H_c+1 = e^{G_last} H_c + sum_{s in c} e^{G_last - G_s} k_s v_s^T

Forward: ``_fwd_h`` scans the chunks sequentially (parallel over batch, heads and Dk/Dv blocks)
and stores every ``H_c`` and the segment-end states; ``_fwd_o`` computes all chunks' outputs in
parallel. Backward: ``_bwd_dh`` scans in reverse for ``dH_c = dL/d(state after chunk c)``,
``_bwd_dqkv`` computes ``dq, dk, dv`` per chunk in parallel and the per-token ``dG_t = q_t . dq_t -
k_t . dk_t``. The log-decay gradient is the suffix sum of ``dG`` plus ``<dstates_i, states_i>`` at
segment ends: every decay enters as ``exp(G_t - G_s)`` with ``t >= s``, so scaling
``q_t -> e^d q_t, k_t -> e^-d k_t, states -> e^d states`` is the same as ``G_t -> G_t + d``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from mcrnn.ops.linear.triton.utils import (
    autotuned,
    chunk_table,
    contiguous,
    dot_dtype,
    dot_precision,
    time_block,
)


@triton.jit
def _chunk_rows(table, c, BT: tl.constexpr):
    """Row ``c`` of the chunk table: token offsets, row mask, segment, first/last flags."""
    start = tl.load(table + c * 4)
    length = tl.load(table + c * 4 + 1)
    seg = tl.load(table + c * 4 + 2)
    flags = tl.load(table + c * 4 + 3)
    offs = tl.arange(0, BT)
    return start + offs, offs < length, seg, (flags & 1) != 0, (flags & 2) != 0


@triton.jit
def _chunk_decay(g, rows, mask, i_b, i_h, T, H: tl.constexpr, USE_G: tl.constexpr, BT: tl.constexpr):
    """Chunk-local cumulative log decay ``G`` [BT] and its total ``G_last`` (zeros without decay)."""
    if USE_G:
        b_g = tl.load(g + (i_b * T + rows) * H + i_h, mask=mask, other=0.0).to(tl.float32)
    else:
        b_g = tl.zeros([BT], dtype=tl.float32)
    return tl.cumsum(b_g, 0), tl.sum(b_g, 0)


@triton.jit
def _fwd_h(
    k, v, g, h, states, table, NC, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, N: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_G: tl.constexpr, RESET: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
):
    """Sequential scan over chunks: ``h[b, c, h] = H_c``, ``states[b, i, h]`` at segment ends."""
    i_k, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    offs_k = i_k * BK + tl.arange(0, BK)
    offs_v = i_v * BV + tl.arange(0, BV)
    tile = offs_k[:, None] * V + offs_v[None, :]
    b_s = tl.zeros([BK, BV], dtype=tl.float32)
    for c in range(NC):
        rows, mask, seg, first, last = _chunk_rows(table, c, BT)
        if RESET:
            b_s = tl.where(first, 0.0, b_s)
        tl.store(h + ((i_b * NC + c) * H + i_h) * K * V + tile, b_s.to(h.dtype.element_ty))
        tok = (i_b * T + rows) * H + i_h
        b_k = tl.load(k + tok[:, None] * K + offs_k[None, :], mask=mask[:, None], other=0.0)
        b_v = tl.load(v + tok[:, None] * V + offs_v[None, :], mask=mask[:, None], other=0.0)
        b_gc, g_last = _chunk_decay(g, rows, mask, i_b, i_h, T, H, USE_G, BT)
        b_k = (b_k.to(tl.float32) * tl.exp(g_last - b_gc)[:, None]).to(DOT)
        b_s = b_s * tl.exp(g_last) + tl.dot(tl.trans(b_k), b_v.to(DOT), input_precision=PREC)
        if last:
            tl.store(states + ((i_b * N + seg) * H + i_h) * K * V + tile, b_s)


@triton.jit
def _fwd_o(
    q, k, v, g, h, o, table, NC, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BV: tl.constexpr,
    USE_G: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
):
    """Outputs of chunk ``c``: inter-chunk read of ``H_c`` plus the causal intra-chunk part."""
    i_v, c, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    rows, mask, seg, first, last = _chunk_rows(table, c, BT)
    offs_k = tl.arange(0, K)
    offs_v = i_v * BV + tl.arange(0, BV)
    qk_ptr = ((i_b * T + rows) * H + i_h)[:, None] * K + offs_k[None, :]
    v_ptr = ((i_b * T + rows) * H + i_h)[:, None] * V + offs_v[None, :]
    b_q = tl.load(q + qk_ptr, mask=mask[:, None], other=0.0).to(DOT)
    b_k = tl.load(k + qk_ptr, mask=mask[:, None], other=0.0).to(DOT)
    b_v = tl.load(v + v_ptr, mask=mask[:, None], other=0.0).to(DOT)
    b_h = tl.load(h + ((i_b * NC + c) * H + i_h) * K * V + offs_k[:, None] * V + offs_v[None, :])
    b_gc, g_last = _chunk_decay(g, rows, mask, i_b, i_h, T, H, USE_G, BT)
    b_o = tl.dot(b_q, b_h.to(DOT), input_precision=PREC) * tl.exp(b_gc)[:, None]
    offs_t = tl.arange(0, BT)
    causal = offs_t[:, None] >= offs_t[None, :]
    # select, not multiply by a 0/1 mask: a later token's NaN/Inf must not reach an earlier row
    b_a = tl.dot(b_q, tl.trans(b_k), input_precision=PREC)
    b_a = tl.where(causal, b_a * tl.exp(b_gc[:, None] - b_gc[None, :]), 0.0)
    finite = tl.abs(b_v) < float("inf")
    b_o += tl.dot(b_a.to(DOT), tl.where(finite, b_v, 0.0).to(DOT), input_precision=PREC)
    # a non-finite v_s[d] reaches o_t[d] for t >= s only (NaN, as in the token loop)
    seen = tl.cumsum(tl.where(finite, 0, 1), 0)
    b_o = tl.where(seen > 0, float("nan"), b_o)
    tl.store(o + v_ptr, b_o.to(o.dtype.element_ty), mask=mask[:, None])


@triton.jit
def _bwd_dh(
    q, do, g, dstates, dh, table, NC, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, N: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_G: tl.constexpr, RESET: tl.constexpr, HAS_DS: tl.constexpr, DOT: tl.constexpr,
    PREC: tl.constexpr,
):
    """Reverse scan: ``dh[b, c, h] = dL/d(state after chunk c)`` (segment-end grads included)."""
    i_k, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    offs_k = i_k * BK + tl.arange(0, BK)
    offs_v = i_v * BV + tl.arange(0, BV)
    tile = offs_k[:, None] * V + offs_v[None, :]
    b_ds = tl.zeros([BK, BV], dtype=tl.float32)
    for cc in range(NC):
        c = NC - 1 - cc
        rows, mask, seg, first, last = _chunk_rows(table, c, BT)
        if HAS_DS:
            if last:
                b_ds += tl.load(dstates + ((i_b * N + seg) * H + i_h) * K * V + tile).to(tl.float32)
        tl.store(dh + ((i_b * NC + c) * H + i_h) * K * V + tile, b_ds.to(dh.dtype.element_ty))
        tok = (i_b * T + rows) * H + i_h
        b_q = tl.load(q + tok[:, None] * K + offs_k[None, :], mask=mask[:, None], other=0.0)
        b_do = tl.load(do + tok[:, None] * V + offs_v[None, :], mask=mask[:, None], other=0.0)
        b_gc, g_last = _chunk_decay(g, rows, mask, i_b, i_h, T, H, USE_G, BT)
        b_q = (b_q.to(tl.float32) * tl.exp(b_gc)[:, None]).to(DOT)
        b_ds = b_ds * tl.exp(g_last) + tl.dot(tl.trans(b_q), b_do.to(DOT), input_precision=PREC)
        if RESET:
            b_ds = tl.where(first, 0.0, b_ds)


@triton.jit
def _bwd_dqkv(
    q, k, v, g, h, dh, do, dq, dk, dv, dg, table, NC, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
    USE_G: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
):
    """Per chunk: ``dq, dk, dv`` and ``dG_t = q_t . dq_t - k_t . dk_t`` (float32)."""
    c, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    rows, mask, seg, first, last = _chunk_rows(table, c, BT)
    offs_k = tl.arange(0, K)
    offs_v = tl.arange(0, V)
    qk_ptr = ((i_b * T + rows) * H + i_h)[:, None] * K + offs_k[None, :]
    v_ptr = ((i_b * T + rows) * H + i_h)[:, None] * V + offs_v[None, :]
    b_q = tl.load(q + qk_ptr, mask=mask[:, None], other=0.0).to(DOT)
    b_k = tl.load(k + qk_ptr, mask=mask[:, None], other=0.0).to(DOT)
    b_v = tl.load(v + v_ptr, mask=mask[:, None], other=0.0).to(DOT)
    b_do = tl.load(do + v_ptr, mask=mask[:, None], other=0.0).to(DOT)
    hk_ptr = ((i_b * NC + c) * H + i_h) * K * V + offs_k[:, None] * V + offs_v[None, :]
    b_h = tl.load(h + hk_ptr).to(DOT)
    b_dh = tl.load(dh + hk_ptr).to(DOT)
    b_gc, g_last = _chunk_decay(g, rows, mask, i_b, i_h, T, H, USE_G, BT)
    offs_t = tl.arange(0, BT)
    causal = offs_t[:, None] >= offs_t[None, :]
    decay = tl.exp(tl.where(causal, b_gc[:, None] - b_gc[None, :], float("-inf")))
    to_end = tl.exp(g_last - b_gc)[:, None]
    # d(scores)[t, s] = do_t . v_s, masked and decayed like the scores
    b_ds = (tl.dot(b_do, tl.trans(b_v), input_precision=PREC) * decay).to(DOT)
    b_a = (tl.dot(b_q, tl.trans(b_k), input_precision=PREC) * decay).to(DOT)
    b_dq = tl.dot(b_do, tl.trans(b_h), input_precision=PREC) * tl.exp(b_gc)[:, None]
    b_dq += tl.dot(b_ds, b_k, input_precision=PREC)
    b_dk = tl.dot(tl.trans(b_ds), b_q, input_precision=PREC)
    b_dk += tl.dot(b_v, tl.trans(b_dh), input_precision=PREC) * to_end
    b_dv = tl.dot(tl.trans(b_a), b_do, input_precision=PREC)
    b_dv += tl.dot(b_k, b_dh, input_precision=PREC) * to_end
    tl.store(dq + qk_ptr, b_dq.to(dq.dtype.element_ty), mask=mask[:, None])
    tl.store(dk + qk_ptr, b_dk.to(dk.dtype.element_ty), mask=mask[:, None])
    tl.store(dv + v_ptr, b_dv.to(dv.dtype.element_ty), mask=mask[:, None])
    if USE_G:
        b_dg = tl.sum(b_q.to(tl.float32) * b_dq, 1) - tl.sum(b_k.to(tl.float32) * b_dk, 1)
        tl.store(dg + (i_b * T + rows) * H + i_h, b_dg, mask=mask)


_KEY = ["H", "K", "V", "BT"]
_launch_fwd_h = autotuned(_fwd_h, _KEY)
_launch_fwd_o = autotuned(_fwd_o, _KEY)
_launch_bwd_dh = autotuned(_bwd_dh, _KEY)
_launch_bwd_dqkv = autotuned(_bwd_dqkv, _KEY)


def _matmul_dtype(dtype: torch.dtype) -> torch.dtype:
    """Storage of the per-chunk states ``H_c`` and their gradients: the 16-bit input dtype, else float32."""
    return dtype if dtype in (torch.float16, torch.bfloat16) else torch.float32


def _state_block(dim: int) -> int:
    """Dk/Dv block of the sequential scans: small blocks give more programs to the GPU."""
    return min(dim, 32)


class ChunkLinearFunction(torch.autograd.Function):
    """Autograd wrapper of the four kernels; see the module docstring for the equations."""

    @staticmethod
    def forward(ctx, q, k, v, log_decay, lengths: tuple[int, ...], reset: bool):
        batch, seq_len, heads, key_dim = q.shape
        value_dim = v.shape[-1]
        block = time_block(max(key_dim, value_dim))
        table = chunk_table(lengths, block, q.device)
        n_chunks, n_seg = table.shape[0], len(lengths)
        # chunk-start states feed only tl.dot, whose operands are in the input dtype anyway
        h = q.new_empty(batch, n_chunks, heads, key_dim, value_dim, dtype=_matmul_dtype(q.dtype))
        states = q.new_zeros(batch, n_seg, heads, key_dim, value_dim, dtype=torch.float32)
        online = torch.empty_like(v)
        bk, bv = _state_block(key_dim), _state_block(value_dim)
        meta = dict(H=heads, K=key_dim, V=value_dim, BT=block, USE_G=log_decay is not None)
        meta.update(DOT=dot_dtype(q.dtype), PREC=dot_precision(q.dtype))
        grid_h = (key_dim // bk, value_dim // bv, batch * heads)
        _launch_fwd_h(
            grid_h, k, v, log_decay, h, states, table, n_chunks, seq_len,
            N=n_seg, BK=bk, BV=bv, RESET=reset, **meta,
        )
        grid_o = (value_dim // bv, n_chunks, batch * heads)
        _launch_fwd_o(grid_o, q, k, v, log_decay, h, online, table, n_chunks, seq_len, BV=bv, **meta)
        ctx.save_for_backward(q, k, v, log_decay, h, states, table)
        ctx.lengths, ctx.reset, ctx.meta = lengths, reset, meta
        return online, states

    @staticmethod
    def backward(ctx, d_online, d_states):
        q, k, v, log_decay, h, states, table = ctx.saved_tensors
        batch, seq_len, heads, key_dim = q.shape
        value_dim = v.shape[-1]
        n_chunks, n_seg, meta = table.shape[0], len(ctx.lengths), ctx.meta
        d_online = torch.zeros_like(v) if d_online is None else d_online.contiguous()
        d_states = None if d_states is None else d_states.contiguous()
        dh = torch.empty_like(h)
        bk, bv = _state_block(key_dim), _state_block(value_dim)
        _launch_bwd_dh(
            (key_dim // bk, value_dim // bv, batch * heads), q, d_online, log_decay, d_states, dh,
            table, n_chunks, seq_len, N=n_seg, BK=bk, BV=bv, RESET=ctx.reset, HAS_DS=d_states is not None,
            **meta,
        )
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        dG = None if log_decay is None else torch.empty(batch, seq_len, heads, device=q.device)
        _launch_bwd_dqkv(
            (n_chunks, batch * heads), q, k, v, log_decay, h, dh, d_online, dq, dk, dv, dG, table,
            n_chunks, seq_len, **meta,
        )
        d_log_decay = None
        if log_decay is not None:
            d_log_decay = _log_decay_grad(dG, states, d_states, ctx.lengths, ctx.reset).to(log_decay.dtype)
        return dq, dk, dv, d_log_decay, None, None


def _log_decay_grad(
    dG: torch.Tensor, states: torch.Tensor, d_states: torch.Tensor | None, lengths: Sequence[int], reset: bool
) -> torch.Tensor:
    """``dg_t = sum_{t' >= t} dG_t'`` (within the segment when ``reset``), ``dG`` [B, T, H] float32.

    The segment-end term ``<dstates_i, states_i>`` is added to ``dG`` at the last token of segment ``i``.
    """
    ends = torch.tensor(list(lengths), device=dG.device).cumsum(0)
    if d_states is not None:
        dG = dG.clone()
        dG[:, ends - 1] += torch.einsum("bnhkv,bnhkv->bnh", d_states.float(), states)
    suffix = dG.flip(1).cumsum(1).flip(1)
    if not reset:
        return suffix
    # subtract the suffix sum that starts at the next segment's first token
    after = torch.cat([suffix, suffix.new_zeros(suffix.shape[0], 1, suffix.shape[2])], dim=1)
    seg_end = torch.repeat_interleave(ends, torch.tensor(list(lengths), device=dG.device))
    return suffix - after[:, seg_end]


def chunk_linear(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor | None,
    lengths: Sequence[int],
    init: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Online reads and segment-end states of decayed linear attention (Triton kernels).

    Args:
        q, k: [B, T, H, Dk]; v: [B, T, H, Dv]; log_decay: [B, T, H] (``g_t <= 0``) or ``None``.
        lengths: segment lengths summing to T.
        init: ``"checkpoint"`` (carry the state across segments) or ``"independent"`` (restart
            from zero at each segment start).

    Returns:
        ``online`` [B, T, H, Dv] (dtype of ``v``) with ``o_t = q_t^T M_t`` (token t included) and
        ``states`` [B, N, H, Dk, Dv] (float32), the state at the end of every segment.
    """
    if init not in ("checkpoint", "independent"):
        raise ValueError(f"init must be 'checkpoint' or 'independent', got {init!r}")
    lengths = tuple(int(n) for n in lengths)
    if sum(lengths) != q.shape[1] or min(lengths, default=0) < 1:
        raise ValueError(f"lengths must be positive and sum to T={q.shape[1]}, got {list(lengths)}")
    q, k, v, log_decay = contiguous(q, k, v, log_decay)
    return ChunkLinearFunction.apply(q, k, v, log_decay, lengths, init == "independent")
