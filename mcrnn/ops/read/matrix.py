"""Reads of cached matrix states, shared by every matrix-memory family (DESIGN.md §3).

A matrix-memory write rule supplies the online reads ``q_t^T M_t`` and the states ``M(i)`` at segment ends;
this module adds the aggregated reads of the cached states:

- :func:`mix_cached_reads`: ``y_t = g_{t,s} online_t + sum_{i < s} g_{t,i} q_t^T M(i)`` with the router
  weights of :func:`~mcrnn.ops.read.segments.router_gates`;
- :func:`cached_read` (dense, for ``residual``/``grm``/``soup``/``average``) or :func:`selected_read`
  (only the ``top_k`` chosen states, for ``ssc``): ``sum_{i < s(t)} g_{t,i} q_t^T M(i)``.

No decay enters a read: whatever the write rule (scalar or per-channel decay, delta rule), a cached state
is read as ``q_t^T M(i)``. Tensors are heads-first ([B, H, T, D]) inside this module.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mcrnn.ops.inputs import all_finite
from mcrnn.ops.read.segments import router_gates, segment_contexts, segment_index
from mcrnn.ops.spec import MCSpec

#: target number of query tokens per block of the cached reads (bounds the read buffers)
READ_BLOCK_TOKENS = 256


def mix_cached_reads(
    qh: torch.Tensor,
    u: torch.Tensor,
    k: torch.Tensor,
    online: torch.Tensor,
    states: torch.Tensor,
    lengths: Sequence[int],
    spec: MCSpec,
) -> torch.Tensor:
    """``y_t = g_{t,s} online_t + sum_{i < s} g_{t,i} q_t^T M(i)`` for any matrix memory, with the
    weights of :func:`~mcrnn.ops.read.segments.router_gates` (contexts pool ``k``).

    Args:
        qh: [B, H, T, Dk] queries (heads first); u, k: [B, T, H, Dk]; online: [B, H, T, Dv] the online
        reads ``q_t^T M_t``; states: [B, H, N, Dk, Dv] the states at segment ends.

    Returns: ``y`` [B, T, H, Dv].
    """
    seg = segment_index(lengths, qh.device)
    contexts, online_context = segment_contexts(k, lengths, spec.pooling)
    cached_gates, online_gate, selected = router_gates(
        u, contexts, online_context, seg, spec.aggregation, spec.top_k
    )
    out = online * online_gate.transpose(1, 2).unsqueeze(-1)
    if len(lengths) > 1:
        gates_h = cached_gates.transpose(1, 2)
        if selected is None or torch.compiler.is_compiling():  # compiled ssc: dense read, zero gates off R_t
            out = out + cached_read(qh, gates_h.contiguous(), states, lengths)
        else:
            out = out + selected_read(qh, gates_h, selected.transpose(1, 2).contiguous(), states)
    return out.transpose(1, 2)


def _read_blocks(lengths: Sequence[int]) -> list[tuple[int, int, int]]:
    """Query blocks ``(start, end, n_visible)`` made of whole segments, about READ_BLOCK_TOKENS long;
    ``n_visible`` is the number of cached states the block's last segment can read."""
    blocks = []
    start = position = 0
    for index, length in enumerate(lengths):
        position += length
        if position - start >= READ_BLOCK_TOKENS or index == len(lengths) - 1:
            if index > 0:
                blocks.append((start, position, index))
            start = position
    return blocks


class _CachedRead(torch.autograd.Function):
    """``y_t = sum_{i} g_{t,i} q_t^T M(i) = vec(g_t (x) q_t) @ [M(1); ...; M(n)]``, block by block.

    Each block of query tokens forms ``X = g (x) q`` [B, H, C, n*Dk] and does one GEMM with the
    stacked states; backward recomputes ``X`` instead of saving it, so memory stays at one block:
    ``dX = dy M^T``, ``dq_t = sum_i g_{t,i} dX_{t,i}``, ``dg_{t,i} = <dX_{t,i}, q_t>``, ``dM = X^T dy``.
    """

    @staticmethod
    def forward(ctx, q, gates, states, blocks):  # noqa: ANN001 - autograd signature
        ctx.save_for_backward(q, gates, states)
        ctx.blocks = blocks
        batch, heads, seq_len, key_dim = q.shape
        out = q.new_zeros(batch, heads, seq_len, states.shape[-1])
        for start, end, n_visible in blocks:
            mixed = gates[:, :, start:end, :n_visible, None] * q[:, :, start:end, None, :]
            out[:, :, start:end] = mixed.flatten(-2) @ states[:, :, :n_visible].flatten(2, 3)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001
        q, gates, states = ctx.saved_tensors
        grad_q = torch.zeros_like(q)
        grad_gates = torch.zeros_like(gates)
        grad_states = torch.zeros_like(states)
        key_dim = q.shape[-1]
        for start, end, n_visible in ctx.blocks:
            block_q = q[:, :, start:end]
            block_g = gates[:, :, start:end, :n_visible]
            block_dy = grad_out[:, :, start:end]
            stacked = states[:, :, :n_visible].flatten(2, 3)  # [B, H, n*Dk, Dv]
            grad_mixed = (block_dy @ stacked.transpose(-1, -2)).unflatten(-1, (n_visible, key_dim))
            grad_q[:, :, start:end] = (block_g.unsqueeze(-1) * grad_mixed).sum(-2)
            grad_gates[:, :, start:end, :n_visible] = (grad_mixed * block_q.unsqueeze(-2)).sum(-1)
            mixed = (block_g.unsqueeze(-1) * block_q.unsqueeze(-2)).flatten(-2)
            grad_states[:, :, :n_visible] += (mixed.transpose(-1, -2) @ block_dy).unflatten(
                2, (n_visible, key_dim)
            )
        return grad_q, grad_gates, grad_states, None


def cached_read(q: torch.Tensor, gates: torch.Tensor, states: torch.Tensor, lengths: Sequence[int]):
    """``y_t = sum_{i < s(t)} g_{t,i} q_t^T M(i)`` for every token.

    Args:
        q: [B, H, T, Dk]; gates: [B, H, T, N] (must be 0 for ``i >= s(t)``); states: [B, H, N, Dk, Dv].

    Returns: [B, H, T, Dv]. A non-finite entry of ``M(i)[:, d]`` makes ``y_t[d]`` NaN for the tokens
    that read ``M(i)`` (``s(t) > i``) and for no other: the block GEMMs, which give a token a zero
    gate for the states it cannot see, run on the finite part of the states.
    """
    if all_finite(states):
        return _CachedRead.apply(q, gates, states, _read_blocks(lengths))
    finite = torch.nan_to_num(states, nan=0.0, posinf=0.0, neginf=0.0)
    out = _CachedRead.apply(q, gates, finite, _read_blocks(lengths))
    # non-finite entries per value column among the first i states: [B, H, N + 1, Dv]
    seen = torch.nn.functional.pad(torch.cumsum((states != finite).any(-2), dim=2), (0, 0, 1, 0))
    reads = seen[:, :, segment_index(lengths, q.device)]  # among the states token t reads
    return out.masked_fill(reads > 0, float("nan"))


class _SelectedRead(torch.autograd.Function):
    """``y_t = sum_j w_{t,j} q_t^T M(idx_{t,j})`` touching only the selected states.

    The (token, slot) pairs are grouped by the state they read; for each cached state ``i`` the
    rows of every (b, h) that chose it are gathered into a padded [B*H, P_i, Dk] batch and multiplied
    by ``M(i)`` in one ``bmm`` (P_i = the most rows any (b, h) sends to state i). Work is
    ``2 * T * k * Dk * Dv`` per head, as for a gathered read, with a Python loop over states only.

    Every pair's read lands in its own slot of a [P + 1, Dv] buffer (plain writes, no scatter-add) and
    the ``k`` slots of a token are summed at the end; the backward does the same for ``dq``.

    Inputs are flat: ``rows`` [R + 1, Dk] (the query rows plus one zero row that padding points at),
    ``weights`` [P + 1] (the P = R * k pair weights plus one zero), ``states`` [B*H, N, Dk, Dv].
    Output: [R, Dv].
    """

    @staticmethod
    def forward(ctx, rows, weights, states, plan):  # noqa: ANN001 - autograd signature
        ctx.save_for_backward(rows, weights, states)
        ctx.plan = plan
        n_rows, n_pairs = rows.shape[0] - 1, weights.shape[0] - 1
        reads = rows.new_zeros(n_pairs + 1, states.shape[-1])
        for state, pair_index, row_index in plan:
            picked = rows[row_index] * weights[pair_index].unsqueeze(-1)  # [BH, P, Dk]
            reads[pair_index] = picked @ states[:, state]
        return reads[:n_pairs].view(n_rows, n_pairs // n_rows, -1).sum(1)

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001
        rows, weights, states = ctx.saved_tensors
        n_rows, n_pairs = rows.shape[0] - 1, weights.shape[0] - 1
        grad_out = torch.cat([grad_out, grad_out.new_zeros(1, grad_out.shape[-1])])
        grad_pair_rows = rows.new_zeros(n_pairs + 1, rows.shape[-1])
        grad_weights = torch.zeros_like(weights)
        grad_states = torch.zeros_like(states)
        for state, pair_index, row_index in ctx.plan:
            picked_q = rows[row_index]  # [BH, P, Dk]
            picked_dy = grad_out[row_index]  # [BH, P, Dv]
            picked_w = weights[pair_index].unsqueeze(-1)
            grad_read = picked_dy @ states[:, state].transpose(-1, -2)  # [BH, P, Dk]
            grad_pair_rows[pair_index] = picked_w * grad_read
            grad_weights[pair_index] = (grad_read * picked_q).sum(-1)
            grad_states[:, state] += (picked_q * picked_w).transpose(-1, -2) @ picked_dy
        grad_weights[-1] = 0.0  # the padding slot
        grad_rows = grad_pair_rows[:n_pairs].view(n_rows, n_pairs // n_rows, -1).sum(1)
        return (
            torch.cat([grad_rows, grad_rows.new_zeros(1, grad_rows.shape[-1])]),
            grad_weights,
            grad_states,
            None,
        )


def _selection_plan(selected: torch.Tensor, weights: torch.Tensor, n_states: int):
    """Group the (b, h, t, slot) pairs of ``selected`` [B, H, T, k] by the cached state they read.

    Pairs with weight exactly 0 (slots pointing at states the token cannot see) are dropped.
    Returns ``(state, pair_index [BH, P], row_index [BH, P])`` per state read by any pair; padding
    entries point at pair ``B*H*T*k`` and row ``B*H*T`` (the zero entries appended by the caller).
    """
    batch, heads, seq_len, slots = selected.shape
    n_pairs = selected.numel()
    flat_state = selected.flatten()
    pair = torch.arange(n_pairs, device=selected.device)
    group = pair // (seq_len * slots)  # which (b, h)
    keep = weights.detach().flatten() != 0
    pair, flat_state, group = pair[keep], flat_state[keep], group[keep]
    key = flat_state * (batch * heads) + group
    order = torch.argsort(key, stable=True)
    pair, group, key = pair[order], group[order], key[order]
    counts = torch.bincount(key, minlength=n_states * batch * heads)
    rank = torch.arange(key.numel(), device=key.device) - (torch.cumsum(counts, 0) - counts)[key]
    per_state = counts.view(n_states, batch * heads)
    plan = []
    begin = 0
    for state, (width, end) in enumerate(
        zip(per_state.amax(1).tolist(), per_state.sum(1).cumsum(0).tolist(), strict=True)
    ):
        if width:
            pair_index = torch.full((batch * heads, width), n_pairs, device=key.device)
            pair_index = pair_index.index_put((group[begin:end], rank[begin:end]), pair[begin:end])
            row_index = torch.where(pair_index == n_pairs, batch * heads * seq_len, pair_index // slots)
            plan.append((state, pair_index, row_index))
        begin = end
    return plan


def selected_read(
    q: torch.Tensor, gates: torch.Tensor, selected: torch.Tensor, states: torch.Tensor
) -> torch.Tensor:
    """``sum_{i in R_t} g_{t,i} q_t^T M(i)`` over the ``top_k`` states each token selected.

    Args:
        q: [B, H, T, Dk]; gates: [B, H, T, N] (zero off the selection); selected: [B, H, T, k] state
        indices; states: [B, H, N, Dk, Dv].

    Returns: [B, H, T, Dv].
    """
    weights = gates.gather(-1, selected)
    plan = _selection_plan(selected, weights, states.shape[2])
    rows = torch.cat([q.flatten(0, 2), q.new_zeros(1, q.shape[-1])])
    pair_weights = torch.cat([weights.flatten(), weights.new_zeros(1)])
    out = _SelectedRead.apply(rows, pair_weights, states.flatten(0, 1), plan)
    return out.view(*q.shape[:3], -1)
