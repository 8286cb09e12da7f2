"""Parallel MC with the per-token Fenwick (log) segmentation of DESIGN.md §5, ``linear`` memory.

Token ``t`` (prefix length ``L = t + 1``) reads one bucket per set bit ``l`` of ``L``: the aligned
dyadic block ``[s, s + 2^l)`` with ``s = (L >> (l+1)) << (l+1)``; the lowest set bit is the online
bucket (it ends at ``t``), the others are cached. So every read is ``q_t^T S_l(t)`` for a state
``S_l`` of level ``l``, and the output is

    y_t = sum_{l in bits(L), l != low(L)} g_{t,l} q_t^T S_l(t) + g_{t,low} q_t^T S_low(t).

Levels whose blocks are shorter than the chunk are read in attention form inside the chunk
(``sum_j w_{t,j} (q_t . k_j) v_j`` with the level's mask and decay); longer levels materialise one
state per pair of blocks from the chunk scan and read it with a batched matmul. Cost: about
``log2(T/c)`` reads of ``2 Dk Dv`` plus ``log2(c)`` intra-chunk attentions per token.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from mcrnn.ops.linear.chunk import all_finite, chunk_states, split_chunks, window_attention
from mcrnn.ops.linear.recurrent import FenwickMemoryCache
from mcrnn.ops.segments import fenwick_buckets, mixing_weights


def fenwick_levels(seq_len: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Per token and level: ``active`` [T, n] (bit set), ``start``/``end`` [T, n] of its bucket, and the
    online level ``low`` [T] (the lowest set bit of ``L = t + 1``)."""
    length = torch.arange(1, seq_len + 1, device=device)
    levels = torch.arange(max(seq_len.bit_length(), 1), device=device)
    active = (length.unsqueeze(1) >> levels) & 1 == 1
    start = (length.unsqueeze(1) >> (levels + 1)) << (levels + 1)
    low = (length & -length).log2().round().long()
    return active, start, start + (1 << levels), low


def log_linear_mc(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor,
    *,
    aggregation: str,
    init: str,
    top_k: int | None,
    pooling: str,
    log_decay: torch.Tensor | None,
    chunk_size: int = 64,
) -> torch.Tensor:
    """MC output [B, T, H, Dv] with Fenwick segmentation for [B, T, H, D] inputs (see module doc)."""
    batch, seq_len, heads, _ = q.shape
    active, start, end, low = fenwick_levels(seq_len, q.device)
    n_levels = active.shape[1]
    visible = active & (torch.arange(n_levels, device=q.device) != low.unsqueeze(1))
    visible = visible.view(1, seq_len, 1, n_levels).expand(batch, -1, heads, -1)

    def logits() -> tuple[torch.Tensor, torch.Tensor]:
        levels = torch.stack([_level_logits(u, k, 1 << level, pooling) for level in range(n_levels)], -1)
        return levels, levels.gather(-1, low.view(1, -1, 1, 1).expand(batch, -1, heads, 1)).squeeze(-1)

    cached_w, online_w, selected = mixing_weights(visible, logits, aggregation, top_k, q.dtype)
    online_level = torch.nn.functional.one_hot(low, n_levels).bool().view(1, seq_len, 1, n_levels)
    weights = (cached_w + online_w.unsqueeze(-1) * online_level).permute(0, 2, 1, 3)  # [B, H, T, n]
    reads = _level_reads(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        None if log_decay is None else log_decay.transpose(1, 2),
        init,
        start,
        end,
        chunk_size,
    )
    if all_finite(q, k, v, log_decay):  # finite reads: a weight of 0 removes a level exactly
        out = sum(weights[..., level, None] * read for level, read in enumerate(reads))
    else:  # select the levels each token reads: the others may hold later tokens' NaN/Inf
        read_levels = active.view(1, seq_len, 1, n_levels)
        if selected is not None:  # ssc: the top_k selected cached levels and the online one
            read_levels = visible & torch.zeros_like(visible).scatter(-1, selected, True) | online_level
        read_levels = read_levels.permute(0, 2, 1, 3)
        out = sum(
            torch.where(read_levels[..., level, None], weights[..., level, None] * read, 0.0)
            for level, read in enumerate(reads)
        )
    return out.transpose(1, 2)


def _level_logits(u: torch.Tensor, k: torch.Tensor, block: int, pooling: str) -> torch.Tensor:
    """``<u_t, c>`` with ``c`` the pooled keys of the even block of t's pair of level blocks: [B, T, H].

    At every level a token reads (cached or online) exactly that block, so one key sum per pair
    serves the pair's ``2 * block`` tokens.
    """
    batch, seq_len, heads, key_dim = u.shape
    n_pairs = -(-seq_len // (2 * block))
    pad = (0, 0, 0, 0, 0, n_pairs * 2 * block - seq_len)
    keys = torch.nn.functional.pad(k, pad).view(batch, n_pairs, 2, block, heads, key_dim)
    context = keys[:, :, 0].sum(2)  # [B, pairs, H, Dk]
    if pooling == "mean":
        context = context / block
    queries = torch.nn.functional.pad(u, pad).view(batch, n_pairs, 2 * block, heads, key_dim)
    return torch.einsum("bpthd,bphd->bpth", queries, context).flatten(1, 2)[:, :seq_len]


def _level_reads(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor | None,
    init: str,
    start: torch.Tensor,
    end: torch.Tensor,
    chunk_size: int,
) -> Iterator[torch.Tensor]:
    """``q_t^T S_l(t)`` for every token, level by level, heads-first: [B, H, T, Dv] per level.

    Entries of levels a token does not read hold garbage (reads of later tokens among it); the
    caller selects them away.
    """
    seq_len = q.shape[2]
    chunk = min(1 << (chunk_size.bit_length() - 1), 1 << (seq_len - 1).bit_length())
    chunks = split_chunks(q, k, v, log_decay, chunk)
    ends, starts = chunk_states(chunks)  # prefix states at / entering every chunk
    entering = chunks.q @ starts  # [B, H, n, c, Dv], q_t^T P_(chunk start - 1)
    token = torch.arange(seq_len, device=q.device)
    for level in range(start.shape[1]):
        block = 1 << level
        if block < chunk:
            yield _attention_level(chunks, entering, init, start[:, level], end[:, level], token, seq_len)
        else:
            yield _state_level(chunks, ends, init, block, seq_len)


def _attention_level(chunks, entering, init, start, end, token, seq_len) -> torch.Tensor:  # noqa: ANN001
    """Level with blocks shorter than the chunk: every bucket lies in its reader's chunk."""
    chunk, n_chunks = chunks.size, chunks.count
    padded = n_chunks * chunk
    chunk_start = (token // chunk) * chunk
    last = (end - 1 - chunk_start).clamp(0, chunk - 1)
    first = (start - chunk_start).clamp(0, chunk - 1) if init == "independent" else torch.zeros_like(last)
    last, first = (torch.nn.functional.pad(x, (0, padded - seq_len)) for x in (last, first))
    shape = (1, 1, n_chunks, chunk)
    out = window_attention(chunks, last.view(shape), first.view(shape))
    if init == "checkpoint":  # plus the state entering the chunk, decayed to ``last``
        if chunks.cum is not None:
            entering = (
                entering * chunks.cum.gather(-1, last.view(shape).expand(chunks.cum.shape)).exp()[..., None]
            )
        out = out + entering
    return out.flatten(2, 3)[:, :, :seq_len]


def _state_level(chunks, prefix_ends, init, block, seq_len) -> torch.Tensor:  # noqa: ANN001
    """Level with blocks of whole chunks: token t reads the state of the even block of its pair."""
    per_block = block // chunks.size
    n_chunks = chunks.count
    if init == "independent":
        block_ends, _ = chunk_states(chunks, range(0, n_chunks, per_block))
    else:
        block_ends = prefix_ends
    n_pairs = -(-seq_len // (2 * block))
    last_chunk = ((torch.arange(n_pairs, device=chunks.q.device) * 2 + 1) * per_block - 1).clamp(
        max=n_chunks - 1
    )
    states = block_ends[:, :, last_chunk]  # [B, H, pairs, Dk, Dv]
    q = chunks.q.flatten(2, 3)[:, :, :seq_len]
    q = torch.nn.functional.pad(q, (0, 0, 0, n_pairs * 2 * block - seq_len))
    out = q.unflatten(2, (n_pairs, 2 * block)) @ states
    return out.flatten(2, 3)[:, :, :seq_len]


def fenwick_prefill_cache(
    k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor | None, init: str
) -> FenwickMemoryCache:
    """The decoding cache after the [B, T, H, D] tokens, built from whole-bucket sums.

    Bucket ``[s, e)`` sums its writes decayed to its end, ``W = sum_i exp(G_{e-1} - G_i) k_i v_i^T``
    (``G`` the cumulative log decay); under ``checkpoint`` the state chains across buckets,
    ``P_b = exp(G_{e-1} - G_{s-1}) P_{b-1} + W_b``.
    """
    batch, seq_len, heads, _ = k.shape
    cum = torch.zeros(batch, seq_len, heads, dtype=k.dtype, device=k.device)
    if log_decay is not None:
        cum = log_decay.cumsum(1)
    states, key_sums, end_decays = [], [], []
    previous = None
    for start, end in fenwick_buckets(seq_len):
        weight = (cum[:, end - 1 : end] - cum[:, start:end]).exp()  # [B, n, H]
        state = torch.einsum("bnhk,bnhv->bhkv", k[:, start:end] * weight.unsqueeze(-1), v[:, start:end])
        if init == "checkpoint" and previous is not None:
            state = state + (cum[:, end - 1] - cum[:, start - 1]).exp()[..., None, None] * previous
        previous = state
        states.append(state)
        key_sums.append(k[:, start:end].sum(1))
        end_decays.append(cum[:, end - 1])
    sizes = [end - start for start, end in fenwick_buckets(seq_len)]
    return FenwickMemoryCache(
        online=states[-1],
        online_key_sum=key_sums[-1],
        online_size=sizes[-1],
        cached=torch.stack(states[:-1], dim=2)
        if len(states) > 1
        else states[-1].new_zeros(batch, heads, 0, *states[-1].shape[-2:]),
        cached_key_sums=torch.stack(key_sums[:-1], dim=1)
        if len(states) > 1
        else k.new_zeros(batch, 0, heads, k.shape[-1]),
        cached_sizes=sizes[:-1],
        cached_log_decay=torch.stack(end_decays[:-1], dim=-1)
        if len(states) > 1
        else cum.new_zeros(batch, heads, 0),
        log_decay_total=cum[:, -1],
        position=seq_len,
    )
