"""Parallel PyTorch path for MC over matrix memories: chunked matmuls and scans, no token loop.

MC over a matrix memory splits into three pieces (each a function here):

1. :func:`chunk_linear`: decayed linear attention inside segments, giving the online read
   ``q_t^T M_t`` for every token and the states ``M(i)`` at segment ends;
2. :func:`~mcrnn.ops.segments.router_gates`: the aggregation weights;
3. :func:`cached_read` (dense, for ``residual``/``grm``/``soup``/``average``) or
   :func:`selected_read` (only the ``top_k`` chosen states, for ``ssc``):
   ``sum_{i < s(t)} g_{t,i} q_t^T M(i)``.

Tensors are handled heads-first ([B, H, T, D]) inside this module.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mcrnn.ops.inputs import all_finite
from mcrnn.ops.segments import segment_index

#: target number of query tokens per block of the cached reads (bounds the read buffers)
READ_BLOCK_TOKENS = 256


def chunk_size_for(lengths: Sequence[int], chunk_size: int) -> int:
    """Largest chunk <= ``chunk_size`` dividing every segment but the last, so chunks never straddle
    a segment boundary (the last segment is padded at the end of the sequence instead)."""
    common = math.gcd(*lengths[:-1]) if len(lengths) > 1 else max(lengths[-1], 1)
    return max(d for d in range(1, min(chunk_size, common) + 1) if common % d == 0)


@dataclass
class Chunks:
    """Chunk-local pieces of decayed linear attention, [B, H, n chunks, c tokens, ...].

    ``cum`` is the inclusive cumulative log decay inside each chunk (None without decay; [..., c, Dk] per
    key channel for the vector-decay memories, whose ``chunk_decay`` is then [B, H, n, Dk] and which form
    ``scores`` themselves: :func:`window_attention` takes a scalar decay only),
    ``scores = q k^T`` per chunk, ``local = sum_j exp(cum_last - cum_j) k_j v_j^T`` the chunk's own
    writes decayed to its end, and ``chunk_decay = exp(cum_last)`` (None without decay).
    ``finite_v`` is ``v`` with its NaN/Inf entries set to 0 and ``nonfinite_v`` is 1 at those entries,
    0 elsewhere (in the dtype of ``v``); when ``q``, ``k`` and ``v`` are all finite, ``nonfinite_v`` is
    None and ``finite_v`` is ``v``.
    """

    q: torch.Tensor
    finite_v: torch.Tensor
    nonfinite_v: torch.Tensor | None
    cum: torch.Tensor | None
    scores: torch.Tensor
    local: torch.Tensor
    chunk_decay: torch.Tensor | None

    @property
    def size(self) -> int:
        return self.q.shape[3]

    @property
    def count(self) -> int:
        return self.q.shape[2]


def split_chunks(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor | None, chunk: int
) -> Chunks:
    """Pad [B, H, T, D] inputs at the end to whole chunks of ``chunk`` tokens and form :class:`Chunks`."""
    batch, heads, seq_len, _ = q.shape
    n_chunks = -(-seq_len // chunk)
    pad = n_chunks * chunk - seq_len
    if pad:
        q, k, v = (torch.nn.functional.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        if log_decay is not None:
            log_decay = torch.nn.functional.pad(log_decay, (0, pad))
    q, k, v = (x.reshape(batch, heads, n_chunks, chunk, x.shape[-1]) for x in (q, k, v))
    finite_v, nonfinite_v = v, None
    if not all_finite(q, k, v):
        finite_v = torch.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0)
        nonfinite_v = (v != finite_v).to(v.dtype)
    pieces = dict(q=q, finite_v=finite_v, nonfinite_v=nonfinite_v, scores=q @ k.transpose(-1, -2))
    if log_decay is None:
        return Chunks(**pieces, cum=None, local=k.transpose(-1, -2) @ v, chunk_decay=None)
    cum = log_decay.reshape(batch, heads, n_chunks, chunk).cumsum(-1)
    local = (k * (cum[..., -1:] - cum).exp().unsqueeze(-1)).transpose(-1, -2) @ v
    return Chunks(**pieces, cum=cum, local=local, chunk_decay=cum[..., -1].exp())


def window_attention(chunks: Chunks, last: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """``sum_{first_t <= j <= last_t} exp(cum[last_t] - cum[j]) (q_t . k_j) v_j`` for every query.

    Args:
        last, first: [c] or [B, H, n, c] chunk-relative positions per query.

    Returns: [B, H, n, c, Dv], the read ``q_t^T S`` of the state at ``last_t`` that starts at ``first_t``
    (with ``last_t = t, first_t = 0`` the causal intra-chunk attention).

    Tokens outside a query's window never reach its row, even when NaN or infinite: when ``q, k, v``
    hold such values (``chunks.nonfinite_v`` is set), the window is selected (not multiplied by a
    0/1 mask), the product runs on the finite part of ``v``, and an entry ``(t, d)`` whose window
    holds a non-finite ``v_j[d]`` is set to NaN, as the token loop gives (``q_t^T M`` with a
    non-finite column ``d``).
    """
    positions = torch.arange(chunks.size, device=chunks.q.device)
    inside = (positions >= first.unsqueeze(-1)) & (positions <= last.unsqueeze(-1))
    cum = chunks.cum
    if cum is None:
        scores = chunks.scores.masked_fill(~inside, 0.0)
    else:
        end = cum.gather(-1, last.expand(cum.shape)) if last.dim() > 1 else cum[..., last]
        exponent = (end.unsqueeze(-1) - cum.unsqueeze(-2)).masked_fill(~inside, float("-inf"))
        scores = chunks.scores * exponent.exp()
    if chunks.nonfinite_v is None:  # finite scores: exp(-inf) = 0 masks exactly
        return scores @ chunks.finite_v
    scores = scores.masked_fill(~inside, 0.0)
    reached = inside.to(scores.dtype) @ chunks.nonfinite_v  # non-finite v_j[d] in each window
    return (scores @ chunks.finite_v).masked_fill(reached > 0, float("nan"))


def chunk_linear(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor | None,
    lengths: Sequence[int],
    init: str,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked decayed linear attention inside segments.

    ``M_t = exp(log_decay_t) M_{t-1} + k_t v_t^T``; ``init="independent"`` restarts from ``M = 0``
    at every segment start, ``"checkpoint"`` continues across segments.

    Args:
        q, k: [B, H, T, Dk]; v: [B, H, T, Dv]; log_decay: [B, H, T] (<= 0) or None.
        lengths: segment lengths summing to T.

    Returns:
        ``online`` [B, H, T, Dv] with ``o_t = q_t^T M_t`` and ``states`` [B, H, N, Dk, Dv], the state at
        the end of every segment.
    """
    batch, heads, seq_len, _ = q.shape
    chunks = split_chunks(q, k, v, log_decay, chunk_size_for(lengths, chunk_size))
    chunk, n_chunks = chunks.size, chunks.count
    positions = torch.arange(chunk, device=q.device)
    # chunk index where each segment starts / ends (chunks never straddle segments)
    chunk_counts = [n // chunk for n in lengths[:-1]] + [n_chunks - sum(n // chunk for n in lengths[:-1])]
    seg_last = torch.tensor(chunk_counts, device=q.device).cumsum(0) - 1
    seg_first = list(itertools.accumulate(chunk_counts[:-1], initial=0))
    ends, starts = chunk_states(chunks, seg_first if init == "independent" else ())
    inter = chunks.q @ starts
    if chunks.cum is not None:
        inter = inter * chunks.cum.exp().unsqueeze(-1)
    online = window_attention(chunks, positions, torch.zeros_like(positions)) + inter
    online = online.reshape(batch, heads, n_chunks * chunk, -1)[:, :, :seq_len]
    return online, ends[:, :, seg_last]


def chunk_states(chunks: Chunks, restarts: Sequence[int] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """States at the end of every chunk and entering every chunk, [B, H, n, Dk, Dv] each.

    ``restarts``: the chunks where the state restarts from zero (a restart discards the earlier
    state, a non-finite one included).
    """
    n_chunks = chunks.count
    bounds = sorted({0, *restarts, n_chunks})
    span = max(end - start for start, end in zip(bounds[:-1], bounds[1:], strict=True))
    reset = None
    if restarts:
        reset = torch.zeros(n_chunks, dtype=torch.bool, device=chunks.q.device)
        reset[list(restarts)] = True
    ends = _chunk_scan(chunks.local, chunks.chunk_decay, reset, span)
    starts = torch.cat([torch.zeros_like(ends[:, :, :1]), ends[:, :, :-1]], dim=2)
    if reset is not None:
        starts = starts.masked_fill(reset.view(1, 1, -1, 1, 1), 0.0)
    return ends, starts


def _chunk_scan(
    local: torch.Tensor, chunk_decay: torch.Tensor | None, reset: torch.Tensor | None, span: int
) -> torch.Tensor:
    """Inclusive scan ``E_n = a_n E_{n-1} + L_n`` over chunks, with ``E_{n-1}`` dropped where ``reset_n``.

    Without decay or resets a cumulative sum; otherwise a Hillis-Steele scan of ``log2(span)``
    vectorised steps (``span``: the most chunks between resets; later steps would only add the
    dropped states) on the triples ``(a, L, r)``: products of decays, which never exceed 1, and
    whether a reset lies in the range. A reset selects instead of multiplying by 0, so a non-finite
    state before it does not reach the chunks after it.

    Args:
        local: [B, H, n, Dk, Dv]; chunk_decay: [B, H, n] (``a_n``), [B, H, n, Dk] (a decay per key channel,
            ``E_n = Diag(a_n) E_{n-1} + L_n``) or None; reset: [n] bool or None.
    """
    if chunk_decay is None and reset is None:
        return local.cumsum(2)
    state = local
    decay = None if chunk_decay is None else chunk_decay.reshape(*chunk_decay.shape[:3], -1, 1)
    step = 1
    while step < span:
        earlier = torch.nn.functional.pad(state[:, :, :-step], (0, 0, 0, 0, step, 0))
        if decay is not None:
            earlier = decay * earlier
            decay = decay * torch.nn.functional.pad(decay[:, :, :-step], (0, 0, 0, 0, step, 0), value=1.0)
        if reset is not None:
            earlier = earlier.masked_fill(reset.view(1, 1, -1, 1, 1), 0.0)
            reset = reset | torch.nn.functional.pad(reset[:-step], (step, 0), value=False)
        state = state + earlier
        step *= 2
    return state


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
