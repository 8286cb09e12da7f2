"""MC over the matrix memories with additive writes (``linear``, ``swla``), parallel: ``chunk_linear_mc``.

The write rule, ``M_t = a_t M_{t-1} + sum_w k_w v_w^T`` (per-head decay ``a_t = exp(log_decay_t)``), runs
as decayed linear attention in chunks, no token loop:

1. :func:`chunk_linear`: the online read ``q_t^T M_t`` for every token and the states ``M(i)`` at segment
   ends (:class:`Chunks`: the chunk-local pieces, :func:`chunk_states`: the chunk-to-chunk scan);
2. the read side (:mod:`mcrnn.ops.read`) adds the router weights and the reads of the cached states
   (:func:`~mcrnn.ops.read.matrix.mix_cached_reads`), or, for ``segmentation="log"``, the Fenwick read
   (:func:`~mcrnn.ops.read.log.fenwick_read`), for which :class:`Chunks` is the
   :class:`~mcrnn.ops.read.log.FenwickWrite` (its chunk-end states and in-chunk bucket reads).

``swla`` is linear in its two writes ``(l_t k_t, v_t)`` and ``(b_t k_{t-1}, v_{t-1})``
(:func:`write_streams`), so it runs the same pieces once per stream. Tensors are heads-first
([B, H, T, D]) inside the chunk pieces. ``backend="triton"`` runs the same computation on the kernels
of :mod:`.triton`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from mcrnn.ops.inputs import all_finite, full_precision, to_compute_dtype
from mcrnn.ops.read.fenwick import fenwick_chunk
from mcrnn.ops.read.fenwick_cache import FenwickMemoryCache, fenwick_prefill_cache
from mcrnn.ops.read.log import fenwick_read
from mcrnn.ops.read.matrix import mix_cached_reads
from mcrnn.ops.read.matrix_cache import MatrixMemoryCache, prefill_cache
from mcrnn.ops.read.segments import router_gates, segment_contexts, segment_index
from mcrnn.ops.spec import DEFAULT_CHUNK_SIZE, MCSpec


def chunk_linear_mc(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor | None = None,
    *,
    spec: MCSpec,
    memory: str = "linear",
    log_decay: torch.Tensor | None = None,
    prev_gate: torch.Tensor | None = None,
    cur_gate: torch.Tensor | None = None,
    output_cache: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    backend: str = "torch",
) -> tuple[torch.Tensor, MatrixMemoryCache | FenwickMemoryCache | None]:
    """Parallel MC over ``linear``/``swla`` (inputs as :func:`mcrnn.ops.memory_caching`, not re-checked),
    every segmentation.

    ``y_t = g_{t,s} q_t^T M_t + sum_{i < s} g_{t,i} q_t^T M(i)`` with the weights of
    :func:`~mcrnn.ops.read.segments.router_gates` and the segments of ``spec``; with ``segmentation="log"``
    the Fenwick buckets of :mod:`mcrnn.ops.read.log` (``swla``: ``init="checkpoint"`` only).

    Args:
        backend: ``torch`` (states accumulate in float32, float64 for float64 inputs) or ``triton``
            (the kernels, inputs in their own dtype, float32 accumulation; not for ``log``).
        chunk_size: the largest inner chunk of the PyTorch path (it picks one dividing the segments).

    Returns: ``o`` [B, T, H, Dv] in ``q``'s dtype and, with ``output_cache``, the decoding cache (a
    :class:`FenwickMemoryCache` for ``log``).
    """
    gates = {"log_decay": log_decay, "prev_gate": prev_gate, "cur_gate": cur_gate}
    if spec.kind == "log":
        (q_c, k, v, u), gates, _ = to_compute_dtype(q, k, v, u, gates)
        streams = write_streams(k, v, memory, gates["prev_gate"], gates["cur_gate"], [k.shape[1]], spec.init)
        with full_precision(q.device):
            out = log_linear_mc(q_c, u, k, streams, gates["log_decay"], spec=spec, chunk_size=chunk_size)
        cache = None
        if output_cache:
            cache = fenwick_prefill_cache(spec, k, v, gates["log_decay"], streams=streams)
            if memory == "swla":
                cache = replace(cache, memory="swla", prev_key=k[:, -1], prev_value=v[:, -1])
        return out.to(q.dtype), cache
    lengths = spec.lengths(q.shape[1])
    if backend == "triton":
        out, states = _triton_linear_mc(
            q, k, v, q if u is None else u, lengths, spec=spec, memory=memory, **gates
        )
    else:
        inputs, gates, _ = to_compute_dtype(q, k, v, u, gates)
        with full_precision(q.device):
            out, states = _torch_linear_mc(
                *inputs, lengths, spec=spec, memory=memory, **gates, chunk_size=chunk_size
            )
    cache = prefill_cache(spec, memory, states, k, v, lengths) if output_cache else None
    return out.to(q.dtype), cache


def heads_first(x: torch.Tensor) -> torch.Tensor:
    """[B, T, H, ...] -> [B, H, T, ...] (contiguous)."""
    return x.transpose(1, 2).contiguous()


def _torch_linear_mc(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor,
    lengths: Sequence[int],
    *,
    spec: MCSpec,
    memory: str,
    log_decay: torch.Tensor | None,
    prev_gate: torch.Tensor | None,
    cur_gate: torch.Tensor | None,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked online memory + gated reads of cached states: ``o`` [B, T, H, Dv] and the segment-end
    states [B, N, H, Dk, Dv]. ``swla`` is linear in its two writes, so it runs the chunked kernel on
    ``(l_t k_t, v_t)`` and ``(b_t k_{t-1}, v_{t-1})`` with the same decay and sums."""
    qh = heads_first(q)
    decay_h = None if log_decay is None else log_decay.transpose(1, 2)
    online, states = 0, 0
    for write_k, write_v in write_streams(k, v, memory, prev_gate, cur_gate, lengths, spec.init):
        part_online, part_states = chunk_linear(
            qh, heads_first(write_k), heads_first(write_v), decay_h, lengths, spec.init, chunk_size
        )
        online, states = online + part_online, states + part_states
    return mix_cached_reads(qh, u, k, online, states, lengths, spec), states.transpose(1, 2)


def log_linear_mc(
    q: torch.Tensor,
    u: torch.Tensor,
    k: torch.Tensor,
    streams: Sequence[tuple[torch.Tensor, torch.Tensor]],
    log_decay: torch.Tensor | None,
    *,
    spec: MCSpec,
    chunk_size: int,
) -> torch.Tensor:
    """MC with the Fenwick segmentation over the additive writes ``streams`` ((key, value) [B, T, H, D] pairs
    with the shared decay ``log_decay`` [B, T, H] or None): ``o`` [B, T, H, Dv]; the router pools ``k``."""
    chunk = fenwick_chunk(chunk_size, q.shape[1])
    qh = heads_first(q)
    decay_h = None if log_decay is None else log_decay.transpose(1, 2)
    writes = [
        split_chunks(qh, heads_first(keys), heads_first(values), decay_h, chunk) for keys, values in streams
    ]
    finite = all_finite(q, k, *(x for stream in streams for x in stream), log_decay)
    return fenwick_read(q, u, k, writes, spec=spec, finite=finite)


def _triton_linear_mc(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor,
    lengths: Sequence[int],
    *,
    spec: MCSpec,
    memory: str,
    log_decay: torch.Tensor | None,
    prev_gate: torch.Tensor | None,
    cur_gate: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same computation as :func:`_torch_linear_mc` on the Triton kernels ([B, T, H, D] layout,
    inputs in their own dtype; the kernels accumulate in float32). ``grm``/``soup`` use the read with
    the router softmax fused in; the other aggregations read with precomputed gates."""
    from mcrnn.ops.linear import triton as mc_triton

    online, states = 0, 0
    for write_k, write_v in write_streams(k, v, memory, prev_gate, cur_gate, lengths, spec.init):
        part_online, part_states = mc_triton.chunk_linear(q, write_k, write_v, log_decay, lengths, spec.init)
        online, states = online + part_online, states + part_states
    contexts, online_context = segment_contexts(k, lengths, spec.pooling)
    if len(lengths) == 1:
        out = online
    elif spec.aggregation in ("grm", "soup"):
        online_logit = (u * online_context).sum(-1)
        out = mc_triton.grm_read(q, u, contexts, online, online_logit, states, lengths)
    else:
        seg = segment_index(lengths, q.device)
        cached, online_gate, selected = router_gates(
            u, contexts, online_context, seg, spec.aggregation, spec.top_k
        )
        out = online * online_gate.unsqueeze(-1).to(online.dtype)
        if selected is None:
            out = out + mc_triton.cached_read(q, cached.to(q.dtype), states, lengths)
        else:
            weights = cached.gather(-1, selected).to(q.dtype)
            out = out + mc_triton.ssc_read(q, selected, weights, states, lengths)
    return out, states


def write_streams(
    k: torch.Tensor,
    v: torch.Tensor,
    memory: str,
    prev_gate: torch.Tensor | None,
    cur_gate: torch.Tensor | None,
    lengths: Sequence[int],
    init: str,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The rank-one writes of a step as (key, value) streams [B, T, H, D] with a shared decay.

    ``linear``: ``k_t v_t^T``. ``swla`` is linear in its two writes: ``(l_t k_t, v_t)`` and
    ``(b_t k_{t-1}, v_{t-1})``, so MC over it is the sum of two runs of the linear kernel.
    """
    if memory == "linear":
        return [(k, v)]
    prev_k, prev_v = _previous_token(k, lengths, init), _previous_token(v, lengths, init)
    return [(k * cur_gate.unsqueeze(-1), v), (prev_k * prev_gate.unsqueeze(-1), prev_v)]


def _previous_token(x: torch.Tensor, lengths: Sequence[int], init: str) -> torch.Tensor:
    """``x_{t-1}`` along time of [B, T, H, D]; zero at t=0 and, for ``independent``, at segment starts."""
    shifted = torch.nn.functional.pad(x[:, :-1], (0, 0, 0, 0, 1, 0))
    if init == "independent" and len(lengths) > 1:
        starts = torch.tensor(list(lengths[:-1]), device=x.device).cumsum(0)
        shifted = shifted.index_fill(1, starts, 0.0)
    return shifted


def chunk_size_for(lengths: Sequence[int], chunk_size: int) -> int:
    """Largest chunk <= ``chunk_size`` dividing every segment but the last, so chunks never straddle
    a segment boundary (the last segment is padded at the end of the sequence instead)."""
    common = math.gcd(*lengths[:-1]) if len(lengths) > 1 else max(lengths[-1], 1)
    return max(d for d in range(1, min(chunk_size, common) + 1) if common % d == 0)


@dataclass
class Chunks:
    """Chunk-local pieces of decayed linear attention, [B, H, n chunks, c tokens, ...].

    ``cum`` is the inclusive cumulative log decay inside each chunk (None without decay),
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

    def chunk_ends(self, restarts: Sequence[int] = ()) -> torch.Tensor:
        """States [B, H, n, Dk, Dv] at the end of every chunk (:func:`chunk_states`); the Fenwick read's
        :class:`~mcrnn.ops.read.log.FenwickWrite`."""
        return chunk_states(self, restarts)[0]

    def bucket_reads(
        self,
        level: torch.Tensor,
        reads: torch.Tensor,
        weights: torch.Tensor,
        last: torch.Tensor,
        init: str,
        finite: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The in-chunk reads of the Fenwick levels shorter than a chunk
        (:meth:`mcrnn.ops.read.log.FenwickWrite.bucket_reads`): one attention per chunk,
        ``sum_j W_{t,j} (q_t . k_j) v_j``, ``W_{t,j}`` the weight of ``j``'s level (``independent``) or of
        every level ``<= lvl(t, j)`` (``checkpoint``), each decayed from ``j`` to its bucket's end."""
        shape = weights.shape
        index = level.clamp(min=0).expand(shape[:3] + level.shape)
        checkpoint = init == "checkpoint"
        if self.cum is None:
            table = weights.cumsum(-1) if checkpoint else weights
            mix = table.gather(-1, index).masked_fill(~reads, 0.0)
            entering = table[..., -1:] if checkpoint else None
        else:
            positions = last.flatten(1).expand(shape[:2] + (shape[2], shape[3] * shape[4]))
            cum_last = self.cum.gather(-1, positions).view(shape)  # cumulative log decay at each bucket's end
            mix = 0.0
            for lvl in range(shape[-1]):
                in_memory = reads & ((level >= lvl) if checkpoint else (level == lvl))
                exponent = cum_last[..., lvl, None] - self.cum.unsqueeze(-2)
                mix = mix + weights[..., lvl, None] * exponent.masked_fill(~in_memory, float("-inf")).exp()
            entering = (weights * cum_last.exp()).sum(-1, keepdim=True) if checkpoint else None
        if finite:
            out = _WeightedAttention.apply(self.scores, mix, self.finite_v)
        else:  # a NaN/Inf outside what a token reads never reaches it; inside, its entries are NaN
            out = _WeightedAttention.apply(self.scores.masked_fill(~reads, 0.0), mix, self.finite_v)
            if self.nonfinite_v is not None:
                hits = reads.to(self.nonfinite_v.dtype) @ self.nonfinite_v
                out = out.masked_fill(hits > 0, float("nan"))
        return out, None if entering is None else self.q * entering


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

    ``chunks``: :class:`Chunks`, or any chunks with its ``local``, ``chunk_decay`` (per head, or per key
    channel [B, H, n, Dk] as :class:`mcrnn.ops.gla.chunk.ChannelChunks`) and ``count``. ``restarts``: the
    chunks where the state restarts from zero (a restart discards the earlier state, a non-finite one
    included).
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


class _WeightedAttention(torch.autograd.Function):
    """``(S * W) @ V`` per chunk, saving ``S``, ``W``, ``V`` but not the product (recomputed in backward):
    ``dV = (S * W)^T dy``, ``dS = (dy V^T) * W``, ``dW = (dy V^T) * S``.

    Inputs: ``scores`` and ``mix`` [B, H, n, c, c], ``v`` [B, H, n, c, Dv]. Output [B, H, n, c, Dv].
    """

    @staticmethod
    def forward(ctx, scores, mix, v):  # noqa: ANN001 - autograd signature
        ctx.save_for_backward(scores, mix, v)
        return (scores * mix) @ v

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001
        scores, mix, v = ctx.saved_tensors
        grad_out = grad_out.contiguous()  # arrives as a view of [B, T, H, Dv]: one copy, not one per matrix
        grad_weighted = grad_out @ v.transpose(-1, -2)
        grad_v = (scores * mix).transpose(-1, -2) @ grad_out
        return grad_weighted * mix, grad_weighted * scores, grad_v
