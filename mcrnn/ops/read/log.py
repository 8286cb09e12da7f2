"""The parallel read of MC with the per-token Fenwick (log) segmentation of DESIGN.md §5, shared by every
matrix-memory family whose bucket states are sums of per-token writes (``linear``; ``swla`` and the delta
rule under ``init="checkpoint"``, where every bucket state is a prefix state).

The write rule supplies every piece that depends on its decay as a :class:`FenwickWrite` (one per write
stream: ``swla`` has two, ``(l_t k_t, v_t)`` and ``(b_t k_{t-1}, v_{t-1})``): the states at the ends of
its chunks (with restarts), and the in-chunk reads of the levels shorter than a chunk. This module owns
the levels, the router (contexts, logits, aggregation weights, the ``ssc`` selection) and the reads of
the states of the longer levels, none of which depends on the decay.

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
bucket ``l``, plus the state entering the chunk. A longer level ``l`` is read only by the tokens with
bit ``l`` of ``L`` set, a run of ``2^l`` tokens per pair of blocks that all read one state (a prefix
state from the write's chunk scan, or the block's own state): one GEMM per run in :class:`_StateLevelRead`,
whose backward recomputes instead of storing per-level tensors. Cost per token: one intra-chunk
attention plus about ``log2(T/c) / 2 + 1`` reads of ``2 Dk Dv`` (forward; backward twice that).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from mcrnn.ops.read.fenwick import fenwick_levels
from mcrnn.ops.read.segments import mixing_weights
from mcrnn.ops.spec import MCSpec


class FenwickWrite(Protocol):
    """What a matrix-memory write rule supplies to :func:`fenwick_read`: its tokens heads-first in chunks of
    ``c`` tokens (a power of two, :func:`~mcrnn.ops.read.fenwick.fenwick_chunk`), zero-padded at the end."""

    @property
    def size(self) -> int:
        """Tokens per chunk ``c``."""
        ...

    @property
    def count(self) -> int:
        """Number of chunks ``n``."""
        ...

    def chunk_ends(self, restarts: Sequence[int] = ()) -> torch.Tensor:
        """States [B, H, n, Dk, Dv] at the end of every chunk, restarting from zero at the chunks in
        ``restarts`` (a restart discards the earlier state, a non-finite one included)."""
        ...

    def bucket_reads(
        self,
        level: torch.Tensor,
        reads: torch.Tensor,
        weights: torch.Tensor,
        last: torch.Tensor,
        init: str,
        finite: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The reads of the levels shorter than a chunk, inside each chunk.

        Args:
            level: [c, c] the level of key ``j``'s bucket for the prefix ending at query ``t``
                (chunk-relative; -1 where ``j`` is not in a small bucket of ``t``); reads: [B, H, n, c, c]
                bool, the keys each query reads; weights: [B, H, n, c, s] the aggregation weights of the
                ``s`` small levels; last: [n, c, s] the chunk-relative end of each query's bucket per small
                level; finite: whether the inputs are finite (else a key a query does not read must not
                reach it, even if NaN).

        Returns: ``sum_l g_{t,l} q_t^T (bucket l's in-chunk state)`` [B, H, n, c, Dv] and, for ``checkpoint``,
        the query [B, H, n, c, Dk] with which token ``t`` reads the state entering its chunk (which every
        small level's memory holds, decayed to the bucket ends), else None.
        """
        ...


def fenwick_read(
    q: torch.Tensor,
    u: torch.Tensor,
    k: torch.Tensor,
    writes: Sequence[FenwickWrite],
    *,
    spec: MCSpec,
    finite: bool,
) -> torch.Tensor:
    """MC output [B, T, H, Dv] with the Fenwick segmentation (module doc): the router pools the keys ``k``
    [B, T, H, Dk] and is queried by ``u`` [B, T, H, Dk]; ``q`` [B, T, H, Dk] reads the states of ``writes``
    (one per write stream, their reads add up); ``finite``: whether every input is finite."""
    batch, seq_len, heads, _ = q.shape
    active, _, end, low = fenwick_levels(seq_len, q.device)
    n_levels = active.shape[1]
    chunk = writes[0].size
    visible = active & (torch.arange(n_levels, device=q.device) != low.unsqueeze(1))
    visible = visible.view(1, seq_len, 1, n_levels).expand(batch, -1, heads, -1)

    def logits() -> tuple[torch.Tensor, torch.Tensor]:
        levels = _level_logits(_chunked(u, chunk), _chunked(k, chunk), n_levels, spec.pooling, seq_len)
        return levels, levels.gather(-1, low.view(1, -1, 1, 1).expand(batch, -1, heads, 1)).squeeze(-1)

    cached_w, online_w, selected = mixing_weights(visible, logits, spec.aggregation, spec.top_k, q.dtype)
    online_level = torch.nn.functional.one_hot(low, n_levels).bool().view(1, seq_len, 1, n_levels)
    weights = (cached_w + online_w.unsqueeze(-1) * online_level).permute(0, 2, 1, 3)  # [B, H, T, n]
    # the levels each token reads; the others hold reads of unrelated (possibly later) tokens
    read_levels = active.view(1, seq_len, 1, n_levels)
    if selected is not None:  # ssc: the top_k selected cached levels and the online one
        read_levels = visible & torch.zeros_like(visible).scatter(-1, selected, True) | online_level
    read_levels = read_levels.permute(0, 2, 1, 3)
    qh = q.transpose(1, 2)
    out = sum(_level_reads(write, qh, spec.init, end, weights, read_levels, finite) for write in writes)
    return out.transpose(1, 2)


def _chunked(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """[B, T, H, D] as heads-first chunks [B, H, n, c, D], padded with zeros at the end."""
    n_chunks = -(-x.shape[1] // chunk)
    x = torch.nn.functional.pad(x.transpose(1, 2), (0, 0, 0, n_chunks * chunk - x.shape[1]))
    return x.unflatten(2, (n_chunks, chunk))


def _level_logits(
    u: torch.Tensor, k: torch.Tensor, n_levels: int, pooling: str, seq_len: int
) -> torch.Tensor:
    """Router logits ``<u_t, c_l(t)>`` of every level, [B, T, H, n], for chunked [B, H, n, c, Dk] inputs.

    ``c_l(t)`` pools the keys of the even block of t's pair of level-``l`` blocks (at every level a
    token reads, cached or online, exactly that block). Per chunk of ``chunk`` tokens (a power of two)
    these are few: the even blocks of the levels shorter than the chunk inside it (``chunk - 1`` of
    them), and one per longer level (a tree of sums of chunk key sums). So every logit is an entry of
    one product ``u_chunk @ [contexts]^T`` per chunk, picked by a static table; a non-finite key only
    reaches the logits of the blocks that hold it.
    """
    batch, heads, n_chunks, chunk, _ = u.shape
    chunk_levels = chunk.bit_length() - 1
    contexts, columns = [], []  # contexts: [B, H, n, *, Dk] per level; columns: [c] index per level
    sums = k  # block sums of the current level, [B, H, n, c / 2^l, Dk]
    for level in range(chunk_levels):
        if level < n_levels:
            offset = sum(x.shape[-2] for x in contexts)
            columns.append(offset + (torch.arange(chunk, device=u.device) >> (level + 1)))
            contexts.append(sums[..., ::2, :])
        sums = sums.unflatten(-2, (-1, 2)).sum(-2)
    if n_levels > chunk_levels:  # sums: [B, H, n, 1, Dk] chunk sums; blocks of 2^j chunks from here
        sums = torch.nn.functional.pad(sums, (0, 0, 0, 0, 0, (1 << (n_levels - chunk_levels)) - n_chunks))
        chunk_index = torch.arange(n_chunks, device=u.device)
        for level in range(chunk_levels, n_levels):
            columns.append(torch.full((chunk,), sum(x.shape[-2] for x in contexts), device=u.device))
            contexts.append(sums[:, :, ::2][:, :, chunk_index >> (level - chunk_levels + 1)])
            sums = sums.unflatten(2, (-1, 2)).sum(3)
    scores = u @ torch.cat(contexts, -2).transpose(-1, -2)  # [B, H, n, c, contexts], key sums
    # the entries of each row's levels, one flat index_select (its backward keeps no copy of scores)
    flat = (
        torch.stack(columns, -1) + scores.shape[-1] * torch.arange(chunk, device=u.device).unsqueeze(1)
    ).flatten()
    picked = scores.flatten(-2).index_select(-1, flat).unflatten(-1, (chunk, n_levels))
    if pooling == "mean":  # level l pools blocks of 2^l keys
        picked = picked / 2.0 ** torch.arange(n_levels, device=u.device, dtype=picked.dtype)
    return _tokens(picked, seq_len).transpose(1, 2)


def _level_reads(
    write: FenwickWrite,
    q: torch.Tensor,
    init: str,
    end: torch.Tensor,
    weights: torch.Tensor,
    read_levels: torch.Tensor,
    finite: bool,
) -> torch.Tensor:
    """``sum_l g_{t,l} q_t^T S_l(t)`` heads-first, [B, H, T, Dv], for the states of one write stream.

    Args:
        q: [B, H, T, Dk]; end: [T, n] end of each token's bucket per level; weights: [B, H, T, n] the
            aggregation weights ``g`` (0 where a level is not read); read_levels: [B, H, T, n] the levels each
            token reads (a state level's read of an unread level holds reads of unrelated, maybe later,
            tokens, selected away); finite: whether the inputs are all finite (else each read is selected).
    """
    seq_len = q.shape[2]
    chunk = write.size
    small = min(chunk.bit_length() - 1, weights.shape[-1])  # levels with blocks shorter than the chunk
    out, entering = _small_levels(
        write, init, end[:, :small], weights[..., :small], read_levels[..., :small], seq_len, finite
    )
    # the state levels (blocks of 2^j chunks: level small + j) and the entering states (tokens of chunk
    # m + 1 read the prefix state ending chunk m): reader windows (offset, size, period) and gates
    has_entering = entering is not None and write.count > 1
    if small == weights.shape[-1] and not has_entering:
        return out
    prefix_ends = write.chunk_ends()  # prefix states at the end of every chunk
    if has_entering:
        window = ((chunk, chunk, chunk), torch.arange(write.count - 1, device=q.device))
        out = out + _StateLevelRead.apply(entering, torch.ones_like(q[..., :1]), prefix_ends, [window])
    if small == weights.shape[-1]:
        return out
    sources, pairs = _state_sources(write, prefix_ends, init, weights.shape[-1] - small, seq_len)
    levels = [(((chunk << j) - 1, chunk << j, chunk << (j + 1)), index) for j, index in enumerate(pairs)]
    gates = weights[..., small:]
    if finite:
        return out + _StateLevelRead.apply(q, gates, sources, levels)
    for column, level in enumerate(levels):  # one level at a time, each selected: NaN * 0 is NaN
        read = _StateLevelRead.apply(q, gates[..., column, None], sources, [level])
        out = out + torch.where(read_levels[..., small + column, None], read, 0.0)
    return out


def _small_levels(
    write: FenwickWrite,
    init: str,
    end: torch.Tensor,
    weights: torch.Tensor,
    read_levels: torch.Tensor,
    seq_len: int,
    finite: bool,
) -> tuple[torch.Tensor | float, torch.Tensor | None]:
    """All levels with blocks shorter than the chunk in one intra-chunk read of the write (module doc).

    Args:
        end: [T, s] bucket ends of the ``s`` small levels; weights, read_levels: [B, H, T, s].

    Returns: the reads [B, H, T, Dv] (0.0 without small levels; a key outside what a token reads never
    reaches its row, even when non-finite) and, for ``checkpoint``, the query [B, H, T, Dk] that reads the
    state entering t's chunk; else None.
    """
    chunk, n_chunks = write.size, write.count
    n_small = weights.shape[-1]
    if n_small == 0:  # chunks of one token
        return 0.0, None
    padded = n_chunks * chunk
    position = torch.arange(chunk, device=weights.device)
    # level of key b's bucket for the prefix ending at query a; -1 where b > a (not in the prefix) or
    # a is the chunk's last token (its prefix length is a multiple of c: no small level)
    span = (position.unsqueeze(1) + 1) ^ position.unsqueeze(0)
    level = torch.floor(torch.log2(span.clamp(min=1).double())).long()
    outside = (position.unsqueeze(0) > position.unsqueeze(1)) | (position == chunk - 1).unsqueeze(1)
    level = level.masked_fill(outside, -1)
    shape = weights.shape[:2] + (n_chunks, chunk, n_small)
    weights = torch.nn.functional.pad(weights, (0, 0, 0, padded - seq_len)).view(shape)
    # checkpoint: every level's memory holds the chunk's prefix up to the online end
    reads = (level >= 0).expand(shape[:3] + (chunk, chunk))
    if init == "independent":  # only the buckets of the levels read (ssc selects some)
        read_levels = read_levels.expand(shape[:2] + (seq_len, n_small))
        read_levels = torch.nn.functional.pad(read_levels, (0, 0, 0, padded - seq_len)).view(shape)
        reads = reads & read_levels.gather(-1, level.clamp(min=0).expand(shape[:3] + (chunk, chunk)))
    token = torch.arange(seq_len, device=end.device).unsqueeze(1)
    relative = torch.minimum(end - 1, token) - token // chunk * chunk  # unread levels: never past t
    last = torch.nn.functional.pad(relative.clamp(min=0), (0, 0, 0, padded - seq_len))
    last = last.view(n_chunks, chunk, n_small)
    out, entering = write.bucket_reads(level, reads, weights, last, init, finite)
    return _tokens(out, seq_len), None if entering is None else _tokens(entering, seq_len)


def _tokens(x: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Chunked [B, H, n, c, ...] as [B, H, T, ...], the end padding dropped (no copy in backward when
    there is none)."""
    x = x.flatten(2, 3)
    return x if x.shape[2] == seq_len else x[:, :, :seq_len]


def _state_sources(
    write: FenwickWrite, prefix_ends: torch.Tensor, init: str, n_levels: int, seq_len: int
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """States of the levels whose blocks are whole chunks, and which one each pair of blocks reads.

    At level ``l`` the tokens of a pair of blocks read the state of its even block: the prefix state
    at the block's end (``checkpoint``, one of ``prefix_ends``) or the block's own state from a chunk
    scan restarting at every block (``independent``).

    Returns: ``sources`` [B, H, N, Dk, Dv] and per level (blocks of ``2^j`` chunks, ``j < n_levels``)
    the index into ``N`` of every pair, [ceil((T + 1) / 2^(l+1))] long.
    """
    n_chunks = write.count
    sources, pairs = [], []
    offset = 0
    for level in range(n_levels):
        pair_tokens = write.size << (level + 1)
        pair = torch.arange(-(-(seq_len + 1) // pair_tokens), device=prefix_ends.device)
        last_chunk = (((pair * 2 + 1) << level) - 1).clamp(max=n_chunks - 1)  # the even block's last
        if init == "independent":
            block_ends = write.chunk_ends(range(0, n_chunks, 1 << level))
            sources.append(block_ends[:, :, last_chunk])
            pairs.append(offset + pair)
            offset += pair.numel()
        else:
            pairs.append(last_chunk)
    return (torch.cat(sources, 2) if init == "independent" else prefix_ends), pairs


class _StateLevelRead(torch.autograd.Function):
    """``y_t = sum_l g_{t,l} q_t^T S_l(t)`` over state levels: each a set of reader windows, all the
    tokens of window ``p`` reading one state ``sources[index_p]``.

    A level ``l`` whose blocks are whole chunks: token ``t`` reads it when bit ``l`` of ``L = t + 1`` is
    set, i.e. ``L`` in the odd block of its pair of level-``l`` blocks, and reads the state of the pair's
    even block; so the windows are ``[s + 2^l - 1, s + 2^(l+1) - 1)`` for the pairs ``[s, s + 2^(l+1))``
    (half the tokens; the others have ``g = 0``). The state entering a chunk is one more such level, its
    windows the chunks. Per run of windows one batched GEMM [2^l, Dk] @ [Dk, Dv] over strided views
    (:func:`_readers`), nothing gathered per token. Backward recomputes ``X = g q`` window by window
    and keeps nothing per level: ``R = dy S^T``, ``dq += g R``, ``dg = <R, q>``, ``dS[index] += X^T dy``.

    Inputs: ``q`` [B, H, T, Dk], ``gates`` [B, H, T, n], ``sources`` [B, H, N, Dk, Dv] and ``levels``:
    per gate column ``((offset, size, period), index)``, the windows of :func:`_readers` and ``index``
    [windows] long into ``N``. Output [B, H, T, Dv].
    """

    @staticmethod
    def forward(ctx, q, gates, sources, levels):  # noqa: ANN001 - autograd signature
        ctx.save_for_backward(q, gates, sources)
        ctx.levels = levels
        out = q.new_zeros(q.shape[:-1] + sources.shape[-1:])
        for column, (window, index) in enumerate(levels):
            for (first, q_l), (_, g_l), (_, out_l) in zip(
                *(_readers(x, *window) for x in (q, gates[..., column], out)), strict=True
            ):
                states = sources[:, :, index[first : first + q_l.shape[2]]]
                out_l += (q_l * g_l.unsqueeze(-1)) @ states
        return out

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001
        q, gates, sources = ctx.saved_tensors
        grad_out = grad_out.contiguous()  # as in _WeightedAttention.backward
        grad_q = torch.zeros_like(q)
        grad_gates = torch.zeros_like(gates)
        grad_sources = torch.zeros_like(sources)
        for column, (window, index) in enumerate(ctx.levels):
            views = (q, gates[..., column], grad_out, grad_q, grad_gates[..., column])
            blocks = (_readers(x, *window) for x in views)
            for (first, q_l), (_, g_l), (_, dy), (_, dq), (_, dg) in zip(*blocks, strict=True):
                pair_index = index[first : first + q_l.shape[2]]
                states = sources[:, :, pair_index]
                read_grad = dy @ states.transpose(-1, -2)  # [B, H, pairs, 2^l, Dk]
                dq += g_l.unsqueeze(-1) * read_grad
                dg.copy_((read_grad * q_l).sum(-1))
                mixed = q_l * g_l.unsqueeze(-1)
                grad_sources.index_add_(2, pair_index, mixed.transpose(-1, -2) @ dy)
        return grad_q, grad_gates, grad_sources, None


#: most reader tokens per GEMM of :class:`_StateLevelRead` (bounds its buffers)
READ_BLOCK_TOKENS = 8192


def _readers(x: torch.Tensor, offset: int, size: int, period: int) -> list[tuple[int, torch.Tensor]]:
    """Views of the reader windows ``[offset + p * period, + size)`` (``size <= period``) of ``x``
    [B, H, T, ...]: ``(first window, [B, H, windows, size, ...])`` for runs of whole windows of about
    READ_BLOCK_TOKENS tokens, then the last window if the end of the sequence cuts it short. Level ``l``:
    ``offset = 2^l - 1``, ``size = 2^l``, ``period = 2^(l+1)`` (bit ``l`` of ``t + 1`` set)."""
    seq_len = x.shape[2]
    whole = max(seq_len - offset, 0) // period
    step = max(READ_BLOCK_TOKENS // size, 1)
    views = []
    for first in range(0, whole, step):
        count = min(step, whole - first)
        start = offset + first * period
        windows = x[:, :, start : start + count * period].unflatten(2, (count, period))
        views.append((first, windows[:, :, :, :size]))
    start = offset + whole * period
    if seq_len > start:
        views.append((whole, x[:, :, start : start + size].unsqueeze(2)))
    return views
