"""Parallel MC with the per-token Fenwick (log) segmentation of DESIGN.md §5, ``linear`` memory.

Token ``t`` (prefix length ``L = t + 1``) reads one bucket per set bit ``l`` of ``L``: the aligned
dyadic block ``[s, s + 2^l)`` with ``s = (L >> (l+1)) << (l+1)``; the lowest set bit is the online
bucket (it ends at ``t``), the others are cached. So every read is ``q_t^T S_l(t)`` for a state
``S_l`` of level ``l``, and the output is

    y_t = sum_{l in bits(L), l != low(L)} g_{t,l} q_t^T S_l(t) + g_{t,low} q_t^T S_low(t).

Levels whose blocks are shorter than the chunk ``c`` lie inside their reader's chunk, and their
buckets partition the chunk's prefix: key ``j`` of the chunk lies in the bucket of level
``lvl(t, j) = floor(log2((t + 1) xor j))`` (chunk-relative positions). So all of them are read in
**one** attention per chunk, ``sum_j W_{t,j} (q_t . k_j) v_j``, with ``W_{t,j} = g_{t,lvl}`` (times the
bucket's decay) under ``independent`` and ``W_{t,j} = sum_{l <= lvl} g_{t,l}`` (each term decayed to
its bucket's end) under ``checkpoint``, whose level-``l`` memory holds every token before the end of
bucket ``l``, plus the state entering the chunk. Longer levels materialise one state per pair of blocks
from the chunk scan and read it with a batched matmul. Cost: about ``log2(T/c)`` reads of
``2 Dk Dv`` plus one intra-chunk attention per token.
"""

from __future__ import annotations

import torch

from mcrnn.ops.inputs import all_finite, full_precision, to_compute_dtype
from mcrnn.ops.linear.chunk import chunk_states, split_chunks
from mcrnn.ops.log.recurrent import FenwickMemoryCache, fenwick_prefill_cache
from mcrnn.ops.segments import mixing_weights
from mcrnn.ops.spec import DEFAULT_CHUNK_SIZE, MCSpec


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
    chunk = min(1 << (chunk_size.bit_length() - 1), 1 << (seq_len - 1).bit_length())
    visible = active & (torch.arange(n_levels, device=q.device) != low.unsqueeze(1))
    visible = visible.view(1, seq_len, 1, n_levels).expand(batch, -1, heads, -1)

    def logits() -> tuple[torch.Tensor, torch.Tensor]:
        levels = _level_logits(u, k, n_levels, chunk, pooling)
        return levels, levels.gather(-1, low.view(1, -1, 1, 1).expand(batch, -1, heads, 1)).squeeze(-1)

    cached_w, online_w, selected = mixing_weights(visible, logits, aggregation, top_k, q.dtype)
    online_level = torch.nn.functional.one_hot(low, n_levels).bool().view(1, seq_len, 1, n_levels)
    weights = (cached_w + online_w.unsqueeze(-1) * online_level).permute(0, 2, 1, 3)  # [B, H, T, n]
    # the levels each token reads; the others hold reads of unrelated (possibly later) tokens
    read_levels = active.view(1, seq_len, 1, n_levels)
    if selected is not None:  # ssc: the top_k selected cached levels and the online one
        read_levels = visible & torch.zeros_like(visible).scatter(-1, selected, True) | online_level
    read_levels = read_levels.permute(0, 2, 1, 3)
    out = _level_reads(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        None if log_decay is None else log_decay.transpose(1, 2),
        init,
        end,
        weights,
        read_levels,
        chunk,
    )
    return out.transpose(1, 2)


def _level_logits(u: torch.Tensor, k: torch.Tensor, n_levels: int, chunk: int, pooling: str) -> torch.Tensor:
    """Router logits ``<u_t, c_l(t)>`` of every level, [B, T, H, n], for [B, T, H, Dk] inputs.

    ``c_l(t)`` pools the keys of the even block of t's pair of level-``l`` blocks (at every level a
    token reads, cached or online, exactly that block). Per chunk of ``chunk`` tokens (a power of two)
    these are few: the even blocks of the levels shorter than the chunk inside it (``chunk - 1`` of
    them), and one per longer level (a tree of sums of chunk key sums). So every logit is an entry of
    one product ``u_chunk @ [contexts]^T`` per chunk, picked by a static table; a non-finite key only
    reaches the logits of the blocks that hold it.
    """
    batch, seq_len, heads, key_dim = u.shape
    n_chunks = -(-seq_len // chunk)
    pad = (0, 0, 0, n_chunks * chunk - seq_len)
    u, k = (torch.nn.functional.pad(x.transpose(1, 2), pad).unflatten(2, (n_chunks, chunk)) for x in (u, k))
    chunk_levels = chunk.bit_length() - 1
    contexts, columns = [], []  # contexts: [B, H, n, *, Dk] per level; columns: [c] index per level
    sums = k  # block sums of the current level, [B, H, n, c / 2^l, Dk]
    for level in range(chunk_levels):
        if level < n_levels:
            offset = sum(x.shape[-2] for x in contexts)
            contexts.append(sums[..., ::2, :] / (1 << level if pooling == "mean" else 1))
            columns.append(offset + (torch.arange(chunk, device=u.device) >> (level + 1)))
        sums = sums.unflatten(-2, (-1, 2)).sum(-2)
    if n_levels > chunk_levels:  # sums: [B, H, n, 1, Dk] chunk sums; blocks of 2^j chunks from here
        sums = torch.nn.functional.pad(sums, (0, 0, 0, 0, 0, (1 << (n_levels - chunk_levels)) - n_chunks))
        chunk_index = torch.arange(n_chunks, device=u.device)
        for level in range(chunk_levels, n_levels):
            offset = sum(x.shape[-2] for x in contexts)
            even = sums[:, :, ::2][:, :, chunk_index >> (level - chunk_levels + 1)]
            contexts.append(even / (1 << level if pooling == "mean" else 1))
            columns.append(torch.full((chunk,), offset, device=u.device))
            sums = sums.unflatten(2, (-1, 2)).sum(3)
    scores = u @ torch.cat(contexts, -2).transpose(-1, -2)  # [B, H, n, c, contexts]
    index = torch.stack(columns, -1).expand(batch, heads, n_chunks, chunk, n_levels)
    return scores.gather(-1, index).flatten(2, 3)[:, :, :seq_len].transpose(1, 2)


def _level_reads(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor | None,
    init: str,
    end: torch.Tensor,
    weights: torch.Tensor,
    read_levels: torch.Tensor,
    chunk: int,
) -> torch.Tensor:
    """``sum_l g_{t,l} q_t^T S_l(t)`` heads-first, [B, H, T, Dv], for inputs [B, H, T, D].

    Args:
        end: [T, n] end of each token's bucket per level; weights: [B, H, T, n] the aggregation
            weights ``g`` (0 where a level is not read); read_levels: [B, H, T, n] the levels each token
            reads (a state level's read of an unread level holds reads of unrelated, maybe later, tokens,
            selected away); chunk: the inner chunk, a power of two.
    """
    seq_len = q.shape[2]
    chunks = split_chunks(q, k, v, log_decay, chunk)
    ends, starts = chunk_states(chunks)  # prefix states at / entering every chunk
    small = min(chunk.bit_length() - 1, weights.shape[-1])  # levels with blocks shorter than the chunk
    finite = all_finite(q, k, v, log_decay)  # else the exact path: select what each token reads
    out = _small_levels(
        chunks, starts, init, end[:, :small], weights[..., :small], read_levels[..., :small], seq_len, finite
    )
    if small == weights.shape[-1]:
        return out
    first = small  # the state levels: blocks of 2^j chunks, level first + j in the Fenwick numbering
    sources, pairs = _state_sources(chunks, ends, init, weights.shape[-1] - first, seq_len)
    levels = [(first + j, index) for j, index in enumerate(pairs)]
    if finite:
        return out + _StateLevelRead.apply(q, weights[..., first:], sources, levels)
    for j, level in enumerate(levels):  # one level at a time, each selected: NaN * 0 is NaN
        read = _StateLevelRead.apply(q, weights[..., first + j, None], sources, [level])
        out = out + torch.where(read_levels[..., first + j, None], read, 0.0)
    return out


def _small_levels(chunks, starts, init, end, weights, read_levels, seq_len, finite) -> torch.Tensor:  # noqa: ANN001
    """All levels with blocks shorter than the chunk in one intra-chunk attention (see module doc).

    Args:
        starts: [B, H, n, Dk, Dv] prefix states entering every chunk; end: [T, s] bucket ends of the
            ``s`` small levels; weights, read_levels: [B, H, T, s].

    Returns: [B, H, T, Dv]. A key outside what a token reads never reaches its row, even when non-finite.
    """
    chunk, n_chunks = chunks.size, chunks.count
    n_small = weights.shape[-1]
    if n_small == 0:  # chunks of one token
        return chunks.finite_v.new_zeros(chunks.finite_v.shape).flatten(2, 3)[:, :, :seq_len]
    padded = n_chunks * chunk
    position = torch.arange(chunk, device=chunks.q.device)
    # level of key b's bucket for the prefix ending at query a; -1 where b > a (not in the prefix) or
    # a is the chunk's last token (its prefix length is a multiple of c: no small level)
    span = (position.unsqueeze(1) + 1) ^ position.unsqueeze(0)
    level = torch.floor(torch.log2(span.clamp(min=1).double())).long()
    outside = (position.unsqueeze(0) > position.unsqueeze(1)) | (position == chunk - 1).unsqueeze(1)
    level = level.masked_fill(outside, -1)
    shape = weights.shape[:2] + (n_chunks, chunk, n_small)
    weights = torch.nn.functional.pad(weights, (0, 0, 0, padded - seq_len)).view(shape)
    index = level.clamp(min=0).expand(shape[:3] + (chunk, chunk))
    reads = level >= 0  # checkpoint: every level's memory holds the chunk's prefix up to the online end
    if init == "independent":  # only the buckets of the levels read (ssc selects some)
        read_levels = read_levels.expand(shape[:2] + (seq_len, n_small))
        read_levels = torch.nn.functional.pad(read_levels, (0, 0, 0, padded - seq_len)).view(shape)
        reads = reads & read_levels.gather(-1, index)
    if chunks.cum is None:  # W[a, b]: the weight of b's level, or (checkpoint) of every level <= it
        table = weights.cumsum(-1) if init == "checkpoint" else weights
        mix = table.gather(-1, index).masked_fill(~reads, 0.0)
        entering = table[..., -1:] if init == "checkpoint" else None
    else:
        token = torch.arange(seq_len, device=end.device).unsqueeze(1)
        relative = torch.minimum(end - 1, token) - token // chunk * chunk  # unread levels: never past t
        last = torch.nn.functional.pad(relative.clamp(min=0), (0, 0, 0, padded - seq_len))
        last = last.view(n_chunks, chunk, n_small)  # chunk-relative end of each small bucket
        cum_last = chunks.cum.gather(-1, last.flatten(1).expand(shape[:2] + (n_chunks, chunk * n_small)))
        cum_last = cum_last.view(shape)  # [B, H, n, c, s] cumulative log decay at each bucket's end
        mix = 0.0
        for lvl in range(n_small):
            in_memory = reads & ((level >= lvl) if init == "checkpoint" else (level == lvl))
            exponent = cum_last[..., lvl, None] - chunks.cum.unsqueeze(-2)
            exponent = exponent.masked_fill(~in_memory, float("-inf"))
            mix = mix + weights[..., lvl, None] * exponent.exp()
        entering = (weights * cum_last.exp()).sum(-1, keepdim=True) if init == "checkpoint" else None
    if finite:
        out = (chunks.scores * mix) @ chunks.finite_v
    else:  # a NaN/Inf outside what a token reads never reaches it; inside, its entries are NaN
        out = (chunks.scores.masked_fill(~reads, 0.0) * mix) @ chunks.finite_v
        if chunks.nonfinite_v is not None:
            hits = reads.to(chunks.nonfinite_v.dtype) @ chunks.nonfinite_v
            out = out.masked_fill(hits > 0, float("nan"))
    if entering is not None:
        out = out + entering * (chunks.q @ starts)
    return out.flatten(2, 3)[:, :, :seq_len]


def _state_sources(chunks, prefix_ends, init, n_levels, seq_len) -> tuple[torch.Tensor, list[torch.Tensor]]:  # noqa: ANN001
    """States of the levels whose blocks are whole chunks, and which one each pair of blocks reads.

    At level ``l`` the tokens of a pair of blocks read the state of its even block: the prefix state
    at the block's end (``checkpoint``, one of ``prefix_ends``) or the block's own state from a chunk
    scan restarting at every block (``independent``).

    Returns: ``sources`` [B, H, N, Dk, Dv] and per level (blocks of ``2^j`` chunks, ``j < n_levels``)
    the index into ``N`` of every pair, [ceil((T + 1) / 2^(l+1))] long.
    """
    n_chunks = chunks.count
    sources, pairs = [], []
    offset = 0
    for level in range(n_levels):
        pair_tokens = chunks.size << (level + 1)
        pair = torch.arange(-(-(seq_len + 1) // pair_tokens), device=chunks.q.device)
        last_chunk = (((pair * 2 + 1) << level) - 1).clamp(max=n_chunks - 1)  # the even block's last
        if init == "independent":
            block_ends, _ = chunk_states(chunks, range(0, n_chunks, 1 << level))
            sources.append(block_ends[:, :, last_chunk])
            pairs.append(offset + pair)
            offset += pair.numel()
        else:
            pairs.append(last_chunk)
    return (torch.cat(sources, 2) if init == "independent" else prefix_ends), pairs


class _StateLevelRead(torch.autograd.Function):
    """``y_t = sum_l g_{t,l} q_t^T S_l(t)`` over the levels whose blocks are whole chunks.

    Token ``t`` reads level ``l`` when bit ``l`` of ``L = t + 1`` is set: ``L`` in the odd block of its
    pair of level-``l`` blocks, every such token reading the state of the pair's even block. So per
    level and pair one GEMM [2^l, Dk] @ [Dk, Dv] of exactly the tokens that read it (half of them;
    the others have ``g = 0``), on strided views of the inputs shifted to ``L``. Backward recomputes
    ``X = g q`` per level and saves nothing per level: ``R = dy S^T``, ``dq += g R``,
    ``dg = <R, q>``, ``dS[pair] += X^T dy``.

    Inputs: ``q`` [B, H, T, Dk], ``gates`` [B, H, T, n], ``sources`` [B, H, N, Dk, Dv] and ``levels``:
    per gate column ``(l, index)`` with ``index`` [pairs] long into ``N``. Output [B, H, T, Dv].
    """

    @staticmethod
    def forward(ctx, q, gates, sources, levels):  # noqa: ANN001 - autograd signature
        q, gates = (torch.nn.functional.pad(x, (0, 0, 1, 0)) for x in (q, gates))  # row L = t + 1
        ctx.save_for_backward(q, gates, sources)
        ctx.levels = levels
        out = q.new_zeros(q.shape[:-1] + sources.shape[-1:])
        for column, (level, index) in enumerate(levels):
            for (first, q_l), (_, g_l), (_, out_l) in zip(
                *(_odd_blocks(x, level) for x in (q, gates[..., column], out)), strict=True
            ):
                states = sources[:, :, index[first : first + q_l.shape[2]]]
                out_l += (q_l * g_l.unsqueeze(-1)) @ states
        return out[:, :, 1:]

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001
        q, gates, sources = ctx.saved_tensors
        grad_out = torch.nn.functional.pad(grad_out, (0, 0, 1, 0))
        grad_q = torch.zeros_like(q)
        grad_gates = torch.zeros_like(gates)
        grad_sources = torch.zeros_like(sources)
        for column, (level, index) in enumerate(ctx.levels):
            views = (q, gates[..., column], grad_out, grad_q, grad_gates[..., column])
            blocks = (_odd_blocks(x, level) for x in views)
            for (first, q_l), (_, g_l), (_, dy), (_, dq), (_, dg) in zip(*blocks, strict=True):
                pair_index = index[first : first + q_l.shape[2]]
                states = sources[:, :, pair_index]
                read_grad = dy @ states.transpose(-1, -2)  # [B, H, pairs, 2^l, Dk]
                dq += g_l.unsqueeze(-1) * read_grad
                dg.copy_((read_grad * q_l).sum(-1))
                mixed = q_l * g_l.unsqueeze(-1)
                grad_sources.index_add_(2, pair_index, mixed.transpose(-1, -2) @ dy)
        return grad_q[:, :, 1:], grad_gates[:, :, 1:], grad_sources, None


def _odd_blocks(x: torch.Tensor, level: int) -> list[tuple[int, torch.Tensor]]:
    """Views of the odd level-``l`` blocks of every pair of ``x`` [B, H, L, ...] (dim 2 indexed by
    prefix length): ``(first pair, [B, H, pairs, 2^l, ...])`` for the whole pairs, then the partial
    one at the end if it reaches its odd block."""
    size = 1 << level
    whole = x.shape[2] // (2 * size)
    blocks = []
    if whole:
        blocks.append((0, x[:, :, : whole * 2 * size].unflatten(2, (whole, 2 * size))[:, :, :, size:]))
    if x.shape[2] > whole * 2 * size + size:
        blocks.append((whole, x[:, :, whole * 2 * size + size :].unsqueeze(2)))
    return blocks


def chunk_log_mc(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor | None = None,
    *,
    spec: MCSpec,
    log_decay: torch.Tensor | None = None,
    output_cache: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, FenwickMemoryCache | None]:
    """Parallel MC with the log segmentation (``linear`` memory; inputs as in
    :func:`mcrnn.ops.memory_caching`, not re-checked): ``o`` [B, T, H, Dv] in ``q``'s dtype and, with
    ``output_cache``, the decoding cache."""
    (q_c, k, v, u), gates, _ = to_compute_dtype(q, k, v, u, {"log_decay": log_decay})
    log_decay = gates["log_decay"]
    with full_precision(q.device):
        out = log_linear_mc(
            q_c, k, v, u, aggregation=spec.aggregation, init=spec.init, top_k=spec.top_k,
            pooling=spec.pooling, log_decay=log_decay, chunk_size=chunk_size,
        )  # fmt: skip
    cache = fenwick_prefill_cache(spec, k, v, log_decay) if output_cache else None
    return out.to(q.dtype), cache
