"""Fused ``grm`` read: router softmax computed inside the read of the cached states, in Triton.

For token ``t`` in segment ``s(t)`` with router query ``u_t``, segment keys ``c_i`` and the online
read ``o_t = q_t^T M_t`` with its logit ``l_t`` (``<u_t, c_s(t)>``, computed by the caller):

    p_{t,i} = exp(<u_t, c_i> - lse_t)  (i < s(t)),   p_{t,on} = exp(l_t - lse_t),
    lse_t   = log(exp(l_t) + sum_{i < s(t)} exp(<u_t, c_i>)),
    y_t     = sum_{i < s(t)} p_{t,i} q_t^T M(i) + p_{t,on} o_t.

No ``[B, T, H, N]`` tensor is materialised: ``_grm_lse`` streams over the segment keys with an
online max/sum (flash-attention style) to get ``lse``, then the read kernels of
:mod:`~mcrnn.ops.linear.triton.cached` recompute ``p`` from ``u``, ``c_i`` and ``lse``. Backward,
with ``r_{t,i} = dy_t . q_t^T M(i)``, ``r_{t,on} = dy_t . o_t`` and ``delta_t = dy_t . y_t``: the
logit gradients are ``p (r - delta)``, giving ``du``, ``dc`` in the kernels and the online terms
``d o_t = p_{t,on} dy_t``, ``d l_t = p_{t,on} (r_{t,on} - delta_t)`` in PyTorch (elementwise).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from mcrnn.ops.linear.triton.cached import (
    SOFTMAX,
    block_tokens,
    check_states,
    dot_operand,
    launch_read,
    launch_read_bwd,
    read_meta,
)
from mcrnn.ops.linear.triton.utils import autotuned, contiguous, segment_tables


@triton.jit
def _grm_lse(
    u, contexts, online_logit, lse, seg_ids, T,
    H: tl.constexpr, K: tl.constexpr, N: tl.constexpr, BT: tl.constexpr,
):
    """``lse_t`` for one block of tokens: online log-sum-exp over the visible segment keys."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    mask, seg, tok = block_tokens(seg_ids, i_t * BT, i_b, i_h, T, H, BT)
    offs_k = tl.arange(0, K)
    b_u = tl.load(u + tok[:, None] * K + offs_k[None, :], mask=mask[:, None], other=0.0).to(tl.float32)
    b_m = tl.load(online_logit + tok, mask=mask, other=0.0).to(tl.float32)
    b_z = tl.full([BT], 1.0, dtype=tl.float32)
    for i in range(0, tl.max(seg, 0)):
        b_c = tl.load(contexts + ((i_b * N + i) * H + i_h) * K + offs_k).to(tl.float32)
        logit = tl.where(mask & (seg > i), tl.sum(b_u * b_c[None, :], 1), float("-inf"))
        b_new = tl.maximum(b_m, logit)
        b_z = b_z * tl.exp(b_m - b_new) + tl.exp(logit - b_new)
        b_m = b_new
    tl.store(lse + tok, b_m + tl.log(b_z), mask=mask)


_launch_lse = autotuned(_grm_lse, ["H", "K", "BT"])


class GrmReadFunction(torch.autograd.Function):
    """Autograd wrapper of the fused read; see the module docstring for the equations."""

    @staticmethod
    def forward(ctx, q, u, contexts, online, online_logit, states, lengths: tuple[int, ...]):
        batch, seq_len, heads, _ = q.shape
        meta = read_meta(q, states, SOFTMAX)
        seg_ids, offsets = segment_tables(lengths, q.device)
        lse = torch.empty(batch, seq_len, heads, device=q.device)
        grid = (triton.cdiv(seq_len, meta["BT"]), batch * heads)
        _launch_lse(grid, u, contexts, online_logit, lse, seg_ids, seq_len, H=heads, K=meta["K"],
                    N=meta["N"], BT=meta["BT"])
        ctx.states_dtype = states.dtype
        states = dot_operand(states, q)
        cached = launch_read(q, states, seg_ids, meta, u=u, contexts=contexts, lse=lse)
        p_online = (online_logit.float() - lse).exp().unsqueeze(-1)
        y = (cached.float() + p_online * online.float()).to(q.dtype)
        ctx.save_for_backward(q, u, contexts, online, states, lse, p_online, y, seg_ids, offsets)
        ctx.meta, ctx.logit_dtype = meta, online_logit.dtype
        return y

    @staticmethod
    def backward(ctx, dy):
        q, u, contexts, online, states, lse, p_online, y, seg_ids, offsets = ctx.saved_tensors
        dy = dy.contiguous()
        delta = (dy.float() * y.float()).sum(-1)
        dq, _, _, du, dstates, dcontexts = launch_read_bwd(
            q, states, dy, seg_ids, offsets, ctx.meta, ctx.states_dtype, u=u, contexts=contexts, lse=lse,
            delta=delta,
        )
        d_online = (p_online * dy.float()).to(online.dtype)
        r_online = (dy.float() * online.float()).sum(-1)
        d_logit = (p_online.squeeze(-1) * (r_online - delta)).to(ctx.logit_dtype)
        return dq, du, dcontexts, d_online, d_logit, dstates, None


def grm_read(
    q: torch.Tensor,
    u: torch.Tensor,
    contexts: torch.Tensor,
    online: torch.Tensor,
    online_logit: torch.Tensor,
    states: torch.Tensor,
    lengths: Sequence[int],
) -> torch.Tensor:
    """The whole ``grm`` output: softmax-gated cached reads plus the gated online read.

    Args:
        q, u: [B, T, H, Dk]; contexts: [B, N, H, Dk] router keys ``c_i`` (entry N-1 unused);
        online: [B, T, H, Dv] online reads ``q_t^T M_t``; online_logit: [B, T, H] ``<u_t, c_s(t)>``;
        states: [B, N, H, Dk, Dv]; lengths: N segment lengths summing to T.

    Returns:
        ``y`` [B, T, H, Dv] in the dtype of ``q``; differentiable in every tensor argument.
    """
    lengths = check_states(q, states, lengths)
    batch, seq_len, heads, key_dim = q.shape
    if tuple(u.shape) != tuple(q.shape) or tuple(contexts.shape) != (batch, len(lengths), heads, key_dim):
        raise ValueError(f"u must be {tuple(q.shape)} and contexts {(batch, len(lengths), heads, key_dim)}, "
                         f"got {tuple(u.shape)} and {tuple(contexts.shape)}")
    if tuple(online.shape) != (batch, seq_len, heads, states.shape[-1]) or online_logit.shape != q.shape[:3]:
        raise ValueError(f"online must be [B, T, H, Dv] and online_logit [B, T, H], "
                         f"got {tuple(online.shape)} and {tuple(online_logit.shape)}")
    q, u, contexts, online, online_logit, states = contiguous(q, u, contexts, online, online_logit, states)
    return GrmReadFunction.apply(q, u, contexts, online, online_logit, states, lengths)
