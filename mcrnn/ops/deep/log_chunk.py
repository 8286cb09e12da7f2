"""Parallel deep-memory MC with the per-token Fenwick (log) segmentation (DESIGN.md §5), no token loop.

Same model as :mod:`.log_naive`. Token ``t`` (prefix length ``L = t + 1``) reads one bucket per set bit
``l`` of ``L``: the aligned block ``[s, s + 2^l)``, ``s = (L >> (l+1)) << (l+1)``, the even block of
its pair of level-``l`` blocks; the lowest set bit is the online bucket (it ends at ``t``). So every
read, online ones included, is a read of the weights at the end ``e = s + 2^l - 1`` of an even block,
by the tokens ``e <= t < e + 2^l``, and the output is

    y_t = sum_{l in bits(L)} g_{t,l} f_{theta_l(t)}(q_t)     (soup: f_{sum_l g_{t,l} theta_l(t)}(q_t)),

with ``g`` from :func:`mcrnn.ops.read.segments.mixing_weights` (cached levels and the online one). Per level:

- **block levels** (``2^l >= b``, the inner chunk): the block ends are chunk ends. ``checkpoint``: the
  stream's weights there are the chunk-start weights of one chunk scan (:func:`.scan.chunk_scan`) of the
  whole sequence. ``independent``: the even blocks of every block level, concatenated, are constant
  segments of whole chunks with a restart at each, so one more chunk scan gives all their end weights.
  The ``2^l`` reading tokens of a pair are one batched MLP read of its state.
- **chunk levels** (``2^l < b``): a pair of blocks lies inside one chunk, so the read is the chunk's
  attention-like read (:func:`.read.online_layer`) with the coefficients of row ``e`` instead of ``t``.
  ``checkpoint``: the stream's chunk-start weights and gradient factors, coefficient rows gathered at
  ``e``; the rows of every chunk level go through one batched read. ``independent``: the block restarts
  at the initial weights with zero momentum, so the factors are the initial weights' key gradients and
  the coefficients those of the block alone (chunks of the pair's ``2^{l+1}`` tokens, the second half
  not written).

Under ``checkpoint`` (but for ``soup``) the online read ``e = t`` is the scan's fused read of every
token's own weights, and the levels are read only where they are cached. Each reader returns its
gate-weighted reads; ``soup`` mixes, layer by layer, every reader's gate-weighted layer output on the
mixed activation. Cost per token: the scan (one, two under ``independent``), about ``log2(b) - 1``
chunk-level reads (``checkpoint``: about 2, half a read per level) and half a block read per level of
``log2(T / b)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mcrnn.ops.deep import network
from mcrnn.ops.deep.coefficients import chunk_coefficients, chunked, masked_rates
from mcrnn.ops.deep.read import ChunkCoefficients, online_layer
from mcrnn.ops.deep.rule import Rates
from mcrnn.ops.deep.scan import ChunkEnd, chunk_scan
from mcrnn.ops.read.fenwick import fenwick_levels
from mcrnn.ops.read.segments import mixing_weights
from mcrnn.ops.spec import MCSpec


def chunk_deep_log_memory_caching(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor,
    *,
    spec: MCSpec,
    memory: str,
    params: Sequence[torch.Tensor],
    rates: Rates,
    chunk_size: int,
) -> torch.Tensor:
    """Output ``o`` [B, T, H, Dv] for validated [B, T, H, D] inputs (see module doc); ``chunk_size`` a
    power of two."""
    batch, seq_len = q.shape[:2]
    init, aggregation = spec.init, spec.aggregation
    cached_gates, online_gate, online_level = _level_gates(u, k, spec)
    gates = cached_gates + online_gate.unsqueeze(-1) * online_level  # [B, H, T, n]
    n_levels = gates.shape[-1]
    rates = masked_rates(rates)  # (eta, alpha, b, momentum_gate), masked tokens as identity steps
    initial = [w.unsqueeze(0).expand(batch, *w.shape) for w in params]
    n_chunk_levels = min(chunk_size.bit_length() - 1, n_levels)
    qh = q.transpose(1, 2)  # [B, H, T, Dk]
    if init == "checkpoint" and aggregation != "soup":  # the online read fused into the scan
        readers, online = _stream_readers(
            memory, initial, q, k, v, rates, chunk_size, n_chunk_levels, n_levels
        )
        out = sum((reader.read(qh, cached_gates) for reader in readers), online_gate.unsqueeze(-1) * online)
        return out.transpose(1, 2)
    if init == "checkpoint":
        readers, _ = _stream_readers(memory, initial, None, k, v, rates, chunk_size, n_chunk_levels, n_levels)
    else:
        readers = _fresh_chunk_readers(memory, initial, k, v, rates, n_chunk_levels)
        readers += _fresh_block_readers(memory, initial, k, v, rates, chunk_size, n_chunk_levels, n_levels)
    if aggregation == "soup":
        out = _mlp(lambda index, a: sum(r.mix_layer(index, a, gates) for r in readers), len(params), qh)
    else:
        out = sum(reader.read(qh, gates) for reader in readers)
    return out.transpose(1, 2)


def _level_gates(
    u: torch.Tensor, k: torch.Tensor, spec: MCSpec
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The aggregation weights of token t's cached buckets ``g_{t,l}`` [B, H, T, n] (0 where bit l of
    ``t + 1`` is clear or l is the online level) and of its online bucket [B, H, T], and the online level
    one-hot [T, n] (float); the router key of a bucket pools its keys (one key sum per pair of blocks)."""
    seq_len = u.shape[1]
    active, _, _, low = fenwick_levels(seq_len, u.device)
    n_levels = active.shape[1]
    online = torch.nn.functional.one_hot(low, n_levels).bool()  # [T, n]
    visible = (active & ~online).view(1, seq_len, 1, n_levels).expand(u.shape[0], -1, u.shape[2], -1)

    def logits() -> tuple[torch.Tensor, torch.Tensor]:
        # every token of a pair of level-l blocks reads the even block (cached or online): its key sum,
        # from the block sums of the level below (padded once to whole top-level pairs)
        span = 1 << n_levels  # > T
        queries = torch.nn.functional.pad(u, (0, 0, 0, 0, 0, span - seq_len))
        block_sums = torch.nn.functional.pad(k, (0, 0, 0, 0, 0, span - seq_len))  # level 0: the keys
        per_level = []
        for level in range(n_levels):
            if level:
                block_sums = block_sums.unflatten(1, (-1, 2)).sum(2)
            block = 1 << level
            n_pairs = -(-seq_len // (2 * block))
            context = block_sums.unflatten(1, (-1, 2))[:, :n_pairs, 0]  # [B, pairs, H, Dk]
            if spec.pooling == "mean":
                context = context / block
            pairs = queries[:, : n_pairs * 2 * block].unflatten(
                1, (n_pairs, 2 * block)
            )  # [B, pairs, 2 block, H, Dk]
            per_level.append((pairs * context.unsqueeze(2)).sum(-1).flatten(1, 2)[:, :seq_len])
        stacked = torch.stack(per_level, -1)  # [B, T, H, n]
        return stacked, stacked.gather(-1, low.view(1, -1, 1, 1).expand(*stacked.shape[:3], 1))[..., 0]

    cached, online_gate, _ = mixing_weights(visible, logits, spec.aggregation, spec.top_k, u.dtype)
    return cached.permute(0, 2, 1, 3), online_gate.transpose(1, 2), online.to(u.dtype)


class _ChunkReader:
    """Reads of levels whose pairs of blocks lie inside chunks of ``size`` tokens: each read row is a token
    at ``positions`` of every chunk reading level ``levels`` (per row) at its bucket's end, through the
    chunk's attention-like read (:func:`.read.online_layer`) with that row's coefficients ``coef``. One
    reader can hold several levels (rows of each), as long as they share the chunks' weights and factors."""

    def __init__(self, weights, momentum, inputs, deltas, coef, size, positions, levels) -> None:  # noqa: ANN001
        self.weights, self.momentum, self.inputs, self.deltas = weights, momentum, inputs, deltas
        self.coef, self.size, self.positions, self.levels = coef, size, positions, levels

    def _chunks(self, x: torch.Tensor) -> torch.Tensor:
        """[B, H, T, ...] -> chunk-major [n, B, H, size, ...] (zero padded)."""
        pad = self.inputs[0].shape[0] * self.size - x.shape[2]
        x = torch.nn.functional.pad(x, (0, 0) * (x.dim() - 3) + (0, pad)).unflatten(2, (-1, self.size))
        return x.permute(2, 0, 1, *range(3, x.dim()))

    def _scatter(self, y: torch.Tensor, gates: torch.Tensor, seq_len: int) -> torch.Tensor:
        """``sum`` over the rows of each token of ``g_{t, level} y_row``: [n, B, H, m, d] -> [B, H, T, d]."""
        n_levels = gates.shape[-1]
        row_gates = self._chunks(gates).flatten(-2).index_select(-1, self.positions * n_levels + self.levels)
        full = y.new_zeros(*y.shape[:-2], self.size, y.shape[-1])
        full = full.index_add(-2, self.positions, row_gates.unsqueeze(-1) * y)
        return full.permute(1, 2, 0, 3, 4).flatten(2, 3)[:, :, :seq_len]

    def layer(self, index: int, x: torch.Tensor) -> torch.Tensor:
        return online_layer(index, x, self.weights, self.momentum, self.inputs, self.deltas, self.coef)

    def mix_layer(self, index: int, a: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """``sum_l g_{t,l} W_{index}(l, t) a_t`` over this reader's levels: [B, H, T, d_out]."""
        rows = self._chunks(a).index_select(-2, self.positions)
        return self._scatter(self.layer(index, rows), gates, a.shape[2])

    def read(self, q: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """``sum_l g_{t,l} f_{theta_l(t)}(q_t)`` over this reader's levels, [B, H, T, Dv]."""
        rows = self._chunks(q).index_select(-2, self.positions)
        return self._scatter(_mlp(self.layer, len(self.weights), rows), gates, q.shape[2])


def _window(
    level: int, size: int, cached_only: bool, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens of a chunk of ``size`` that read level ``level``, ``e <= p < e + 2^level`` for the end
    ``e`` of each even block (``cached_only``: ``e < p``, the tokens that read it cached), and that end
    for each: two LongTensors [m]."""
    block = 1 << level
    first = int(cached_only)
    ends = torch.arange(block - 1, size, 2 * block, device=device).repeat_interleave(block - first)
    return ends + torch.arange(first, block, device=device).repeat(size // (2 * block)), ends


class _BlockReader:
    """Reads of level ``level`` of whole-chunk blocks: ``states`` (per layer ``[B, H, P, d_out, d_in]``,
    the weights at the end of the even block of pair ``p``) read by the ``2^level`` tokens
    ``e <= t < e + 2^level``."""

    def __init__(self, states: list[torch.Tensor], level: int) -> None:
        self.states, self.level, self.block = states, level, 1 << level

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """[B, H, T, d] -> the reading tokens [B, H, P, block, d]: with ``x`` shifted one token later they
        are the odd block of each pair."""
        pairs = self.states[0].shape[2]
        shifted = torch.nn.functional.pad(x, (0, 0, 1, 0))[:, :, : pairs * 2 * self.block]
        shifted = torch.nn.functional.pad(shifted, (0, 0, 0, pairs * 2 * self.block - shifted.shape[2]))
        return shifted.unflatten(2, (pairs, 2, self.block))[:, :, :, 1]

    def _scatter(self, y: torch.Tensor, gates: torch.Tensor, seq_len: int) -> torch.Tensor:
        """[B, H, P, block, d] -> ``g_{t,level} y_t`` [B, H, T, d] (zero for the tokens not reading it)."""
        spread = torch.stack([torch.zeros_like(y), y], dim=3).flatten(2, 4)[:, :, 1 : seq_len + 1]
        return gates[..., self.level, None] * torch.nn.functional.pad(
            spread, (0, 0, 0, seq_len - spread.shape[2])
        )

    def mix_layer(self, index: int, a: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        return self._scatter(self._rows(a) @ self.states[index].transpose(-1, -2), gates, a.shape[2])

    def read(self, q: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        return self._scatter(network.forward(self.states, self._rows(q)), gates, q.shape[2])


def _mlp(layer, depth: int, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    """The memory network (:func:`network.forward`) with layer ``i`` applied as ``layer(i, a)``."""
    a = x
    for i in range(depth):
        z = layer(i, a)
        a = network.gelu(z) if i < depth - 1 else z
    return a + x if depth > 1 else a


def _chunk_rates(rates: tuple, size: int, pad: int | None = None) -> tuple[torch.Tensor, ...]:
    """``(eta, alpha, beta, momentum_gate)`` [B, T, H] chunk-major ``[n, B, H, size]``, padded by ``pad``
    tokens (None: to whole chunks) that are identity steps."""
    eta, alpha, beta, momentum_gate = rates
    pad = -eta.shape[1] % size if pad is None else pad
    return (
        chunked(eta, pad, size, 0.0),
        chunked(alpha, pad, size, 1.0),
        None if beta is None else chunked(beta, pad, size, 1.0),
        None if momentum_gate is None else chunked(momentum_gate, pad, size, 0.0),
    )


def _stream_readers(memory, initial, q, k, v, rates, chunk_size, n_chunk_levels, n_levels) -> tuple:  # noqa: ANN001
    """``checkpoint``: every level from one chunk scan of the stream (see module doc), as
    readers. With queries ``q`` the scan also reads every token's own weights (the online read,
    [B, H, T, Dv], returned second) and the levels are read only where they are cached; without
    (``None``), the levels include their online reads. The chunk levels share one reader."""
    seq_len = k.shape[1]
    pad = -seq_len % chunk_size
    kc, vc = chunked(k, pad, chunk_size, 0.0), chunked(v, pad, chunk_size, 0.0)
    eta_c, alpha_c, beta_c, gate_c = _chunk_rates(rates, chunk_size)
    n_chunks = kc.shape[0]
    last = torch.full((n_chunks,), chunk_size - 1, device=k.device)
    last[-1] = (seq_len - 1) % chunk_size
    coef, ends = chunk_coefficients(eta_c, alpha_c, beta_c, last, gate_c)
    read = None if q is None else (chunked(q, pad, chunk_size, 0.0), coef)
    scan = chunk_scan(memory, initial, kc, vc, ends, [], False, read=read, keep_states=True)
    windows = [
        (*_window(level, chunk_size, q is not None, k.device), level)
        for level in range(1 if q is not None else 0, n_chunk_levels)  # level 0 is only ever read online
    ]
    readers: list = []
    if windows:
        positions, rows = torch.cat([w[0] for w in windows]), torch.cat([w[1] for w in windows])
        levels = torch.cat([torch.full_like(w[0], w[2]) for w in windows])
        read_rows = ChunkCoefficients(
            coef.retain.index_select(-1, rows),
            coef.mix.index_select(-2, rows),
            None if coef.carry is None else coef.carry.index_select(-1, rows),
        )
        readers.append(
            _ChunkReader(
                scan.weights,
                scan.momentum,
                scan.inputs,
                scan.deltas,
                read_rows,
                chunk_size,
                positions,
                levels,
            )
        )
    # the weights entering chunk j, j = 0..n (n: after the last token), at the end of every complete even
    # block of every block level (with q: only levels some token reads cached), gathered at once
    levels = [level for level in range(n_chunk_levels, n_levels) if q is None or (1 << level) < seq_len]
    ends_at = [torch.arange(1 << level, seq_len + 1, 2 << level, device=k.device) for level in levels]
    if levels:
        boundary = [
            torch.cat([w, f.unsqueeze(0)]) for w, f in zip(scan.weights, scan.final_weights, strict=True)
        ]
        index = torch.cat(ends_at) // chunk_size
        states = [
            w.index_select(0, index).permute(1, 2, 0, 3, 4).split([len(e) for e in ends_at], 2)
            for w in boundary
        ]
        readers += [_BlockReader([w[i] for w in states], level) for i, level in enumerate(levels)]
    if q is None:
        return readers, None
    return readers, scan.output.permute(1, 2, 0, 3, 4).flatten(2, 3)[:, :, :seq_len]


def _fresh_chunk_readers(memory, initial, k, v, rates, n_chunk_levels) -> list[_ChunkReader]:  # noqa: ANN001
    """``independent``, ``2^level < b``: the even block of each pair from the initial weights alone (the
    key gradients at the initial weights, once for every token), its end read by the pair's window;
    chunks of the pair's ``2^{level+1}`` tokens."""
    if n_chunk_levels == 0:
        return []
    widest = 2 << (n_chunk_levels - 1)
    pad = -k.shape[1] % widest
    tokens = [
        torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad)).transpose(1, 2) for x in (k, v)
    ]  # [B, H, T', d]
    factors = network.key_gradients(memory, initial, *tokens)
    levels = []
    for level in range(n_chunk_levels):
        size, block = 2 << level, 1 << level
        eta_c, alpha_c, beta_c, gate_c = (
            None if x is None else x[..., :block] for x in _chunk_rates(rates, size, pad)
        )
        last = torch.full((eta_c.shape[0],), block - 1, device=k.device)
        _, end = chunk_coefficients(eta_c, alpha_c, beta_c, last, gate_c)

        def even_blocks(x: torch.Tensor, size: int = size, block: int = block) -> torch.Tensor:
            """[B, H, T', d] -> the even block of every pair, [n, B, H, block, d]."""
            return x.unflatten(2, (-1, size))[:, :, :, :block].permute(2, 0, 1, 3, 4)

        coef = ChunkCoefficients(
            end.retain.unsqueeze(-1).expand(*end.retain.shape, block), end.mix.unsqueeze(-2)
        )
        positions = torch.arange(block - 1, size - 1, device=k.device)
        inputs, deltas = [even_blocks(x) for x in factors.inputs], [even_blocks(x) for x in factors.deltas]
        levels.append(
            _ChunkReader(
                initial, None, inputs, deltas, coef, size, positions, torch.full_like(positions, level)
            )
        )
    return levels


def _fresh_block_readers(memory, initial, k, v, rates, chunk_size, first, n_levels) -> list[_BlockReader]:  # noqa: ANN001
    """``independent``, ``2^level >= b``: every complete even block ``[s, s + 2^level)`` is a run from the
    initial weights; blocks of several levels starting at one ``s`` are prefixes of the longest one. So
    one chunk scan runs the longest complete block of every start, concatenated as segments of whole
    chunks each restarting from the initial weights, and a block's end weights are the weights entering
    the run's chunk after it (or the run's end)."""
    seq_len = k.shape[1]
    pad = -seq_len % chunk_size
    kc, vc = chunked(k, pad, chunk_size, 0.0), chunked(v, pad, chunk_size, 0.0)
    eta_c, alpha_c, beta_c, gate_c = _chunk_rates(rates, chunk_size)
    last = torch.full((kc.shape[0],), chunk_size - 1, device=k.device)
    _, ends = chunk_coefficients(eta_c, alpha_c, beta_c, last, gate_c)
    blocks = {  # level -> starts of its complete even blocks
        level: range(0, seq_len - (1 << level) + 1, 2 << level) for level in range(first, n_levels)
    }
    longest: dict[int, int] = {}  # start -> tokens of its run
    for level, starts in blocks.items():
        for start in starts:
            longest[start] = max(longest.get(start, 0), 1 << level)
    chunks, offsets = [], {}
    for start, length in sorted(longest.items()):
        offsets[start] = len(chunks)
        chunks.extend(range(start // chunk_size, (start + length) // chunk_size))
    if not chunks:
        return []
    index = torch.tensor(chunks, device=k.device)
    selected = ChunkEnd(*[x.index_select(0, index) for x in ends.tensors()])
    points = [offsets[start] for start in sorted(longest)]
    scan = chunk_scan(
        memory, initial, kc.index_select(0, index), vc.index_select(0, index), selected, points[1:], True
    )
    # [chunk starts of every run..., run ends...]: a block ending inside its run ends where a chunk starts
    run_index = {start: r for r, start in enumerate(sorted(longest))}
    states = [
        torch.cat([w, c, f.unsqueeze(0)])
        for w, c, f in zip(scan.weights, scan.cached, scan.final_weights, strict=True)
    ]
    where = [
        offsets[start] + (1 << level) // chunk_size
        if (1 << level) < longest[start]
        else len(chunks) + run_index[start]
        for level, starts in blocks.items()
        for start in starts
    ]
    gathered = [
        w.index_select(0, torch.tensor(where, device=k.device)).permute(1, 2, 0, 3, 4) for w in states
    ]
    per_level = [torch.split(w, [len(starts) for starts in blocks.values()], 2) for w in gathered]
    return [_BlockReader([w[i] for w in per_level], level) for i, level in enumerate(blocks)]
