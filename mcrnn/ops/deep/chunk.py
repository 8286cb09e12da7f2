"""Chunk-parallel deep-memory MC: batched hand-derived inner gradients, a loop over chunks only.

Same model as :mod:`mcrnn.ops.deep.naive`. For one chunk of ``c``
tokens with start weights ``W_l`` (momentum ``S_l``), per-token gradients are rank one,
``grad_{W_l} l_j = delta_{l,j} a_{l-1,j}^T`` (:func:`network.key_gradients`, all at the chunk start).
With ``A_t = prod_{m<=t} a_m`` and ``B_t = prod_{m<=t} b_m`` over the chunk, unrolling
``S_t = b_t S_{t-1} - eta_t g_t`` and ``theta_t = a_t theta_{t-1} + S_t`` gives

    theta_t = A_t theta_0 + P_t S_0 - sum_{i<=t} M_{ti} eta_i g_i,
    S_t     = B_t S_0 - sum_{i<=t} (B_t / B_i) eta_i g_i,

    P_t = sum_{j<=t} (A_t / A_j) B_j,    M_{ti} = sum_{i<=j<=t} (A_t / A_j)(B_j / B_i),

i.e. ``M = D_A D_B`` for the lower-triangular decay matrices ``D_A[t, j] = A_t / A_j =
prod_{j<r<=t} a_r`` (formed as products over each range, never as quotients, and differentiated
without dividing by a gate: :class:`GateProducts`; exact to rounding for gates of 0 or 1e-12). ``dla`` has no
momentum: ``M = D_A``, ``P = 0``. A masked token is an identity step: ``eta = 0``, ``a = b = 1``
and its momentum does not enter the weights (``m_j = 0`` in ``P`` and between ``D_A`` and ``D_B``).
Reading layer ``l`` of ``theta_t`` on any input ``x_t`` is then attention-like:

    W_{l,t} x_t = A_t W_l x_t + P_t S_l x_t - sum_{i<=t} M_{ti} eta_i (a_{l-1,i} . x_t) delta_{l,i},

one ``[c, c]`` masked score matrix per layer and no per-token weights. The chunk-end state is row
``t = c`` of the same sums, a weighted ``delta^T a`` matmul.

Schedule: the coefficients of every chunk are formed at once (autograd, through
:class:`GateProducts`); then one pass over the chunks, :func:`mcrnn.ops.deep.scan.chunk_scan`, takes
each chunk's key gradients, reads it and forms its end state while they are in cache, without
recording a graph (its backward is written by hand). Tensors are chunk-major, ``[n, B, H, c, ...]``,
so every chunk is a contiguous slice. The sequence is padded to whole chunks (only the final chunk
can be partial; its padding has ``eta = 0``, comes after every real token, and its end state is
taken at the last real token).

Aggregations: the online read is the scan's (but for ``soup``); cached memories (weights at
segment ends) are read after the chunk loop, one state at a time over the contiguous tokens after
its segment (``residual``, ``grm``, ``average``), or only over the tokens that selected it (``ssc``:
gathered per state, so each token pays for ``top_k`` reads, not ``N``). ``soup`` mixes parameters
per token without forming them: every layer of the mixed network is linear in its weights, so

    W*_{l,t} x_t = g_{t,s} W_{l,t} x_t + sum_{i<s} g_{t,i} W_l(i) x_t,

evaluated for all cached states at once as one matmul against the concatenated ``W_l(i)^T`` on the
mixed activation ``x_t = a*_{l-1,t}``; the GELU between layers is applied to the mixed ``z*``, so the
next layer again receives one vector per token. Cost: ``N`` reads per token, like ``grm``. For
``soup`` the scan returns every chunk's start state and gradient factors and this read runs after it,
segment by segment, differentiated by autograd.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

import torch

from mcrnn.ops.deep import network
from mcrnn.ops.deep.coefficients import chunk_coefficients, chunked, masked_rates
from mcrnn.ops.deep.log_chunk import chunk_deep_log_memory_caching
from mcrnn.ops.deep.log_recurrent import DeepFenwickCache, run_starts
from mcrnn.ops.deep.naive import cast_inputs, naive_deep_mc
from mcrnn.ops.deep.read import ChunkCoefficients, online_layer
from mcrnn.ops.deep.recurrent import DeepMemoryCache
from mcrnn.ops.deep.rule import Rates
from mcrnn.ops.deep.scan import ScanResult, chunk_scan
from mcrnn.ops.inputs import all_finite, full_precision
from mcrnn.ops.read.fenwick import fenwick_buckets
from mcrnn.ops.read.segments import router_gates, segment_contexts, segment_index
from mcrnn.ops.spec import MCSpec


@dataclass
class ChunkResult:
    """Output ``[B, T, H, Dv]`` and the state after the last token (for a decoding cache)."""

    output: torch.Tensor
    weights: list[torch.Tensor]
    momentum: list[torch.Tensor] | None
    chunk_start: list[torch.Tensor]
    cached: list[list[torch.Tensor]]


def chunk_deep_memory_caching(
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
) -> ChunkResult:
    """Fast MC output for validated inputs (see :func:`mcrnn.ops.memory_caching`) and the final state, for
    the segments of ``spec`` (not ``log``).

    A masked token (``rates.mask`` False) is an identity step, i.e. ``eta = 0``, ``alpha = momentum = 1``
    and (titans) no momentum added to the weights.
    """
    batch, seq_len = q.shape[:2]
    lengths, aggregation = spec.lengths(seq_len), spec.aggregation
    if len(lengths) == 1:  # one segment: every aggregation reads the online memory alone, weight 1
        aggregation, gates, online_gate = "base", None, None
    else:
        seg = segment_index(lengths, q.device)
        contexts, online_context = segment_contexts(k, lengths, spec.pooling)
        gates, online_gate, _ = router_gates(u, contexts, online_context, seg, aggregation, spec.top_k)
    # chunk-major, padded to whole chunks: [n, B, H, c, ...]. Only the final chunk can
    # be partial (segments are multiples of chunk_size but the last); its padding has eta = 0 and comes
    # after every real token, and its end state is read at the last real token, so it changes nothing.
    eta, alpha, beta, momentum_gate = masked_rates(rates)
    n_chunks = -(-seq_len // chunk_size)
    pad = n_chunks * chunk_size - seq_len
    qc, kc, vc, eta_c = (chunked(x, pad, chunk_size, 0.0) for x in (q, k, v, eta))
    alpha_c = chunked(alpha, pad, chunk_size, 1.0)
    beta_c = chunked(beta, pad, chunk_size, 1.0) if beta is not None else None
    gate_c = chunked(momentum_gate, pad, chunk_size, 0.0) if momentum_gate is not None else None
    last = torch.full((n_chunks,), chunk_size - 1, device=q.device)
    last[-1] = (seq_len - 1) % chunk_size
    coef, ends = chunk_coefficients(eta_c, alpha_c, beta_c, last, gate_c)
    chunk_counts = [-(-n // chunk_size) for n in lengths]
    first_chunks = list(accumulate(chunk_counts[:-1], initial=0))  # first chunk of each segment
    initial = [w.unsqueeze(0).expand(batch, *w.shape) for w in params]
    reset = spec.init == "independent"
    # the online read is fused into the scan, but for soup, which mixes cached states into every layer
    fused = aggregation != "soup"
    read = (qc, coef) if fused else None
    scan = chunk_scan(memory, initial, kc, vc, ends, first_chunks[1:], reset, read=read)
    cached = [list(state) for state in zip(*(c.unbind(0) for c in scan.cached), strict=True)]
    if fused:
        out = scan.output
    else:
        chunked_gates = _chunked_gates(gates, online_gate, pad, chunk_size)
        out = _soup_reads(scan, qc, coef, chunked_gates, cached, chunk_counts)
    out = out.permute(1, 2, 0, 3, 4).flatten(2, 3)[:, :, :seq_len]  # [B, H, T, Dv]
    if aggregation not in ("soup", "base"):
        out = _add_cached_reads(out, q, gates, online_gate, cached, lengths, aggregation)
    return ChunkResult(
        out.transpose(1, 2),
        scan.final_weights,
        scan.final_momentum,
        scan.last_start,
        cached,
    )


def _add_cached_reads(
    out: torch.Tensor,
    q: torch.Tensor,
    gates: torch.Tensor,
    online_gate: torch.Tensor,
    cached: Sequence[Sequence[torch.Tensor]],
    lengths: Sequence[int],
    aggregation: str,
) -> torch.Tensor:
    """``g_{t,s} out_t + sum_{i<s} g_{t,i} f_i(q_t)``; ``out`` [B, H, T, Dv], ``gates`` [B, T, H, N]."""
    gates, online_gate = gates.transpose(1, 2), online_gate.transpose(1, 2)  # [B, H, T, N], [B, H, T]
    qh = q.transpose(1, 2)
    out = online_gate.unsqueeze(-1) * out
    bounds = list(accumulate(lengths))
    for i, state in enumerate(cached):
        if aggregation == "ssc" and not torch.compiler.is_compiling():  # compiled: the dense read below
            out = out + _sparse_cached_read(state, qh, gates[..., i], bounds[i])
        else:
            read = gates[:, :, bounds[i] :, i, None] * network.forward(state, qh[:, :, bounds[i] :])
            out = out + torch.nn.functional.pad(read, (0, 0, bounds[i], 0))
    return out


def _chunked_gates(
    gates: torch.Tensor, online_gate: torch.Tensor, pad: int, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Router gates ``[B, T, H, N]`` and ``[B, T, H]`` in the chunk-major layout (padding gets 0)."""
    return chunked(gates, pad, chunk_size, 0.0), chunked(online_gate, pad, chunk_size, 0.0)


def _split_fields(field: object, counts: Sequence[int]) -> list:
    """Split a chunk-major field (tensor, per-layer list, ``None`` or coefficients) into ``counts`` chunks."""
    if field is None:
        return [None] * len(counts)
    if isinstance(field, ChunkCoefficients):
        parts = [_split_fields(x, counts) for x in (field.retain, field.mix, field.carry)]
        return [ChunkCoefficients(*p) for p in zip(*parts, strict=True)]
    if isinstance(field, torch.Tensor):
        return list(torch.split(field, list(counts)))
    return [list(p) for p in zip(*(torch.split(x, list(counts)) for x in field), strict=True)]


def _soup_reads(
    scan: ScanResult,
    query: torch.Tensor,
    coef: ChunkCoefficients,
    gates: tuple[torch.Tensor, torch.Tensor],
    cached: Sequence[Sequence[torch.Tensor]],
    chunk_counts: Sequence[int],
) -> torch.Tensor:
    """The soup read of every chunk ``[n, B, H, c, Dv]``, segment by segment (segment ``s`` mixes the
    ``s`` states cached before it); ``gates`` are the chunk-major cached and online router gates."""
    fields = (scan.weights, scan.momentum, scan.inputs, scan.deltas, coef)
    per_segment = [_split_fields(field, chunk_counts) for field in fields]
    groups = [torch.split(x, list(chunk_counts)) for x in (query, *gates)]
    reads = []
    for s, (segment_query, g_cached, g_online) in enumerate(zip(*groups, strict=True)):
        # the cached W_l(i)^T side by side: [1, B, H, d_in, s * d_out]
        stacked = [
            torch.cat([state[l].transpose(-1, -2) for state in cached[:s]], -1).unsqueeze(0) if s else None
            for l in range(len(scan.weights))
        ]
        segment_fields = [field[s] for field in per_segment]
        reads.append(_soup_read(segment_query, *segment_fields, stacked, g_cached[..., :s], g_online))
    return torch.cat(reads)


def _soup_read(
    query: torch.Tensor,
    weights: Sequence[torch.Tensor],
    momentum: Sequence[torch.Tensor] | None,
    inputs: Sequence[torch.Tensor],
    deltas: Sequence[torch.Tensor],
    coef: ChunkCoefficients,
    stacked: Sequence[torch.Tensor],
    gates: torch.Tensor,
    online_gate: torch.Tensor,
) -> torch.Tensor:
    """``f_{theta*_t}(q_t)`` with ``theta*_t = g_{t,s} theta_t + sum_i g_{t,i} theta(i)``, layer by layer.

    ``stacked[l]`` is ``[1, B, H, d_in, N_c * d_out]`` (the cached ``W_l(i)^T`` side by side), ``query``
    ``[n, B, H, c, Dk]``, ``gates`` ``[n, B, H, c, N_c]`` and ``online_gate`` ``[n, B, H, c]``.
    """
    a = query
    n_cached = gates.shape[-1]
    for l in range(len(weights)):
        z = online_gate.unsqueeze(-1) * online_layer(l, a, weights, momentum, inputs, deltas, coef)
        if n_cached:
            per_state = (a @ stacked[l]).unflatten(-1, (n_cached, -1))  # [B, H, c, N_c, d_out]
            z = z + (gates.unsqueeze(-1) * per_state).sum(-2)
        a = network.gelu(z) if l < len(weights) - 1 else z
    return a + query if len(weights) > 1 else a


def _sparse_cached_read(
    state: Sequence[torch.Tensor], query: torch.Tensor, gate: torch.Tensor, end: int
) -> torch.Tensor:
    """``g_{t,i} f_i(q_t)`` for the tokens after ``end`` whose gate on this state is non-zero (ssc).

    Per (batch, head) the selecting tokens are packed to the front (stable sort), read with one
    batched forward of width ``max count``, and scattered back; padded slots contribute 0.
    """
    gate = gate[..., end:]  # [B, H, T']
    chosen = gate != 0
    counts = chosen.sum(-1)
    width = int(counts.max()) if counts.numel() else 0
    out = query.new_zeros(*query.shape[:-1], state[-1].shape[-2])
    if width == 0:
        return out
    order = torch.argsort((~chosen).to(torch.int8), dim=-1, stable=True)[..., :width]
    valid = torch.arange(width, device=query.device) < counts.unsqueeze(-1)
    picked = query[:, :, end:].gather(2, order.unsqueeze(-1).expand(-1, -1, -1, query.shape[-1]))
    weight = torch.where(valid, gate.gather(2, order), 0.0).unsqueeze(-1)
    read = torch.where(valid.unsqueeze(-1), weight * network.forward(state, picked), 0.0)
    index = (order + end).unsqueeze(-1).expand_as(read)
    return out.scatter_add(2, index, read)


def chunk_deep_mc(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor | None = None,
    *,
    spec: MCSpec,
    memory: str,
    params: Sequence[torch.Tensor],
    eta: torch.Tensor,
    alpha: torch.Tensor,
    momentum: torch.Tensor | None = None,
    chunk_size: int,
    output_cache: bool = False,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, DeepMemoryCache | DeepFenwickCache | None]:
    """The chunk-parallel path, every segmentation (inputs as :func:`~mcrnn.ops.deep.naive_deep_mc`): ``o``
    [B, T, H, Dv] in ``q``'s dtype and, with ``output_cache``, the decoding cache."""
    inputs, params, rates = cast_inputs(q, k, v, u, params, Rates(eta, alpha, momentum, mask))
    options = {"spec": spec, "memory": memory, "params": params, "rates": rates, "chunk_size": chunk_size}
    out = None
    if not all_finite(*inputs, *rates.gates()):
        # the chunk products would carry a later token's NaN/Inf to earlier tokens of its chunk (0 * NaN);
        # the token-loop definition is causal by construction (slow, but only for such inputs)
        definition = {"spec": spec, "memory": memory, "params": params, "chunk_size": chunk_size}
        out = naive_deep_mc(*inputs, **definition, **vars(rates))[0].to(q.dtype)
        if not output_cache:
            return out, None
    if spec.kind == "log":
        if out is None:
            with full_precision(q.device):
                out = chunk_deep_log_memory_caching(*inputs, **options).to(q.dtype)
        return out, deep_fenwick_prefill(*inputs[1:3], **options) if output_cache else None
    with full_precision(q.device):
        result = chunk_deep_memory_caching(*inputs, **options)
    out = result.output.to(q.dtype) if out is None else out
    return out, _segment_cache(spec, memory, chunk_size, result, inputs[1]) if output_cache else None


def _segment_cache(
    spec: MCSpec, memory: str, chunk_size: int, result: ChunkResult, keys: torch.Tensor
) -> DeepMemoryCache:
    """The decoding cache after a parallel pass over the [B, T, H, Dk] ``keys`` (constant, explicit or no
    segments): the final state of ``result``, the cached weights and the segments' key sums."""
    lengths = spec.lengths(keys.shape[1])
    ends = torch.tensor([0, *lengths]).cumsum(0).tolist()
    sums = [keys[:, a:b].sum(1) for a, b in zip(ends[:-1], ends[1:], strict=True)]
    return DeepMemoryCache(
        spec=spec,
        position=keys.shape[1],
        memory=memory,
        chunk_size=chunk_size,
        weights=result.weights,
        momentum=result.momentum,
        chunk_start=result.chunk_start,
        key_sum=sums[-1],
        key_count=lengths[-1],
        segment_start=ends[-2],
        cached=result.cached,
        context_sums=sums[:-1],
        context_counts=lengths[:-1],
    )


def deep_fenwick_prefill(
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    spec: MCSpec,
    memory: str,
    params: Sequence[torch.Tensor],
    rates: Rates,
    chunk_size: int,
) -> DeepFenwickCache:
    """The log-segmentation decoding cache after the [B, T, H, D] tokens: each bucket's weights and each
    growing run's state from the chunk path over the run's tokens (``O(log T)`` runs of at most ``T``
    tokens)."""
    seq_len = k.shape[1]
    one_segment = MCSpec(init=spec.init, pooling=spec.pooling)

    def run(start: int, end: int) -> tuple[list[torch.Tensor], list[torch.Tensor] | None, list[torch.Tensor]]:
        keys, part = k[:, start:end], slice(start, end)
        with full_precision(k.device):
            result = chunk_deep_memory_caching(
                keys,
                keys,
                v[:, part],
                keys,
                spec=one_segment,
                memory=memory,
                params=params,
                rates=rates.span(part),
                chunk_size=chunk_size,
            )
        return result.weights, result.momentum, result.chunk_start

    buckets = fenwick_buckets(seq_len)
    origin = (lambda start: 0) if spec.init == "checkpoint" else (lambda start: start)
    starts = [s for s in run_starts(seq_len, spec.init) if s < seq_len]
    runs = {s: run(s, seq_len) for s in starts}
    bucket_weights = [
        runs[origin(s)][0] if e == seq_len and origin(s) in runs else run(origin(s), e)[0] for s, e in buckets
    ]
    return DeepFenwickCache(
        spec=spec,
        position=seq_len,
        memory=memory,
        chunk_size=chunk_size,
        bucket_weights=bucket_weights,
        bucket_key_sums=[k[:, s:e].sum(1) for s, e in buckets],
        run_starts=starts,
        run_weights=[runs[s][0] for s in starts],
        run_momentum=[runs[s][1] for s in starts] if memory == "titans" else None,
        run_chunk_starts=[runs[s][2] for s in starts],
    )
