"""The ``gla`` write rule, chunkwise: online reads and states at segment ends, no token loop.

Per head, with a decay per key channel (fla's gated linear attention, ``gk``)::

    M_t = Diag(exp(g_t)) M_{t-1} + k_t v_t^T,   o_t = q_t^T M_t        (g_t in R^Dk, finite, <= 0)

Inside a chunk of ``c`` tokens entered with state ``S``, ``G_t = sum_{i<=t} g_i`` (in-chunk, per channel)::

    o_t = (q_t * exp(G_t))^T S + sum_{j<=t} [sum_d q_t[d] k_j[d] exp(G_t[d] - G_j[d])] v_j
    S'  = Diag(exp(G_c)) S + sum_j (k_j * exp(G_c - G_j)) v_j^T

The pair weights ``exp(G_t - G_j)`` differ per channel, so ``q k^T`` cannot be decayed after the product
as for a scalar decay, and factoring them as ``(q_t e^{G_t}) . (k_j e^{-G_j})`` overflows for strong
decays. :func:`decayed_scores` never exponentiates a positive number: it halves the chunk recursively
and factors each off-diagonal quadrant through the token between its halves (both factors <= 1). The
chunk-to-chunk states come from the scan of :mod:`mcrnn.ops.linear.chunk` with a per-channel chunk
decay. The cached reads, routers and segmentation are the read side's (:mod:`mcrnn.ops.read`): this
module supplies the online reads and the states at segment ends, and for the log segmentation a
:class:`~mcrnn.ops.read.log.FenwickWrite` (:class:`ChannelChunks`).

No ``1/sqrt(Dk)`` scale is applied: fla's default ``scale = Dk ** -0.5`` is the caller's to put on ``q``.
Tensors are heads-first ([B, H, T, D]) inside this module.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from mcrnn.ops.inputs import all_finite, full_precision, to_compute_dtype
from mcrnn.ops.linear.chunk import chunk_size_for, chunk_states, heads_first
from mcrnn.ops.read.fenwick import fenwick_chunk
from mcrnn.ops.read.fenwick_cache import FenwickMemoryCache, fenwick_prefill_cache
from mcrnn.ops.read.log import fenwick_read
from mcrnn.ops.read.matrix import mix_cached_reads
from mcrnn.ops.read.matrix_cache import MatrixMemoryCache, prefill_cache
from mcrnn.ops.spec import DEFAULT_CHUNK_SIZE, MCSpec

#: the largest inner chunk of the log (Fenwick) path, whose in-chunk bucket reads weigh every (query, key,
#: channel) triple explicitly ([c, c, Dk] per chunk)
LOG_CHUNK_SIZE = 16


def chunk_gla_mc(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor | None = None,
    *,
    spec: MCSpec,
    log_decay: torch.Tensor,
    output_cache: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, MatrixMemoryCache | FenwickMemoryCache | None]:
    """Parallel MC over the ``gla`` memory (inputs as :func:`mcrnn.ops.memory_caching`, not re-checked),
    every segmentation and init.

    ``y_t = g_{t,s} q_t^T M_t + sum_{i < s} g_{t,i} q_t^T M(i)`` with the weights of
    :func:`~mcrnn.ops.read.segments.router_gates` and the segments of ``spec``; with ``segmentation="log"``
    the Fenwick buckets of :mod:`mcrnn.ops.read.log` (:class:`ChannelChunks` is the write it reads).

    Args:
        q, k, u: [B, T, H, Dk] (``u`` None: ``u = q``; ``q`` is not scaled); v: [B, T, H, Dv].
        log_decay: [B, T, H, Dk] ``g_t`` (finite, <= 0), the log decay of each key channel.
        chunk_size: the largest inner chunk (the path picks one dividing every segment but the last; the
            log path at most ``LOG_CHUNK_SIZE``).

    Returns: ``o`` [B, T, H, Dv] in ``q``'s dtype (states accumulate in float32, float64 for float64
    inputs) and, with ``output_cache``, the decoding cache (a ``FenwickMemoryCache`` for ``log``).
    """
    (qc, kc, vc, uc), gates, _ = to_compute_dtype(q, k, v, u, {"log_decay": log_decay})
    log_decay = gates["log_decay"]
    if spec.kind == "log":
        with full_precision(q.device):
            out = log_gla_mc(qc, uc, kc, vc, log_decay, spec=spec, chunk_size=chunk_size)
        cache = None
        if output_cache:
            cache = replace(fenwick_prefill_cache(spec, kc, vc, log_decay), memory="gla")
        return out.to(q.dtype), cache
    lengths = spec.lengths(q.shape[1])
    qh, kh, vh, decay_h = (heads_first(x) for x in (qc, kc, vc, log_decay))
    with full_precision(q.device):
        online, states = chunk_gla(qh, kh, vh, decay_h, lengths, spec.init, chunk_size)
        out = mix_cached_reads(qh, uc, kc, online, states, lengths, spec)
    cache = prefill_cache(spec, "gla", states.transpose(1, 2), k, v, lengths) if output_cache else None
    return out.to(q.dtype), cache


def log_gla_mc(
    q: torch.Tensor,
    u: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    *,
    spec: MCSpec,
    chunk_size: int,
) -> torch.Tensor:
    """MC with the Fenwick segmentation over the writes ``k_t v_t^T`` [B, T, H, D] with the per-channel
    decay ``log_decay`` [B, T, H, Dk] (both inits: a GLA bucket state is linear in its writes): ``o``
    [B, T, H, Dv]; the router pools ``k``. The KDA path calls it with its pseudo-values as ``v``."""
    chunk = fenwick_chunk(min(chunk_size, LOG_CHUNK_SIZE), q.shape[1])
    write = split_channel_chunks(*(heads_first(x) for x in (q, k, v, log_decay)), chunk)
    return fenwick_read(q, u, k, [write], spec=spec, finite=all_finite(q, k, v))


def chunk_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    lengths: Sequence[int],
    init: str,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked GLA inside segments (module docstring); ``init="independent"`` restarts from ``M = 0`` at
    every segment start, ``"checkpoint"`` continues across segments.

    Args:
        q, k: [B, H, T, Dk]; v: [B, H, T, Dv]; log_decay: [B, H, T, Dk] (<= 0).
        lengths: segment lengths summing to T.

    Returns: ``online`` [B, H, T, Dv] with ``o_t = q_t^T M_t`` and ``states`` [B, H, N, Dk, Dv], the state
    at the end of every segment.
    """
    chunks = split_channel_chunks(q, k, v, log_decay, chunk_size_for(lengths, chunk_size))
    firsts, lasts = segment_chunks(lengths, chunks.size, chunks.count)
    ends, starts = chunk_states(chunks, firsts if init == "independent" else ())
    online = causal_attend(decayed_scores(chunks.q, chunks.k, chunks.cum), chunks.v, chunks.finite)
    online = online + (chunks.q * chunks.cum.exp()) @ starts
    return from_chunks(online, q.shape[2]), ends[:, :, lasts]


@dataclass
class ChannelChunks:
    """Chunk-local pieces of GLA, [B, H, n chunks, c tokens, ...]: ``q``, ``k`` [.., c, Dk], ``v``
    [.., c, Dv], ``cum`` [.., c, Dk] the inclusive in-chunk cumulative log decay per channel, ``local =
    sum_j (k_j * exp(G_c - G_j)) v_j^T`` the chunk's writes decayed to its end, ``chunk_decay =
    exp(G_c)`` [B, H, n, Dk], and ``finite`` whether ``q, k, v`` are all finite. The
    :class:`~mcrnn.ops.read.log.FenwickWrite` of the log path; :func:`chunk_states` scans it."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    cum: torch.Tensor
    local: torch.Tensor
    chunk_decay: torch.Tensor
    finite: bool

    @property
    def size(self) -> int:
        return self.q.shape[3]

    @property
    def count(self) -> int:
        return self.q.shape[2]

    def chunk_ends(self, restarts: Sequence[int] = ()) -> torch.Tensor:
        """States [B, H, n, Dk, Dv] at the end of every chunk (:func:`chunk_states`)."""
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
        (:meth:`mcrnn.ops.read.log.FenwickWrite.bucket_reads`): ``sum_j [sum_d q_t[d] k_j[d] W_tj[d]] v_j``
        with ``W_tj[d] = sum_l g_{t,l} exp(G_{e_l}[d] - G_j[d])`` over ``j``'s level (``independent``) or
        every level ``<= lvl(t, j)`` (``checkpoint``), ``e_l`` the end of ``t``'s level-``l`` bucket (every
        exponent <= 0: ``j <= e_l``); explicit [c, c, Dk] weights per level."""
        shape = weights.shape  # [B, H, n, c, s]
        positions = last.flatten(1).expand(shape[:2] + (shape[2], shape[3] * shape[4]))
        cum_last = self.cum.gather(-2, positions.unsqueeze(-1).expand(*positions.shape, self.cum.shape[-1]))
        cum_last = cum_last.view(*shape, -1)  # [B, H, n, c, s, Dk] at each bucket's end
        checkpoint = init == "checkpoint"
        mix = 0.0
        for lvl in range(shape[-1]):
            in_memory = reads & ((level >= lvl) if checkpoint else (level == lvl))
            exponent = cum_last[..., lvl, None, :] - self.cum.unsqueeze(-3)  # [B, H, n, c, c, Dk]
            exponent = exponent.masked_fill(~in_memory.unsqueeze(-1), -math.inf)
            mix = mix + weights[..., lvl, None, None] * exponent.exp()
        scores = ((self.q.unsqueeze(-2) * mix) * self.k.unsqueeze(-3)).sum(-1).masked_fill(~reads, 0.0)
        out = masked_attend(scores, reads, self.v, finite)
        entering = self.q * (weights.unsqueeze(-1) * cum_last.exp()).sum(-2) if checkpoint else None
        return out, entering


def split_channel_chunks(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor, chunk: int
) -> ChannelChunks:
    """Pad [B, H, T, D] inputs at the end to whole chunks of ``chunk`` tokens (zero keys write nothing,
    zero log decays keep the state) and form :class:`ChannelChunks`."""
    finite = all_finite(q, k, v)
    q, k, v, log_decay = (to_chunks(x, chunk) for x in (q, k, v, log_decay))
    cum = log_decay.cumsum(-2)
    last = cum[..., -1:, :]
    local = (k * (last - cum).exp()).transpose(-1, -2) @ v
    return ChannelChunks(q, k, v, cum, local, last.squeeze(-2).exp(), finite)


def decayed_scores(x: torch.Tensor, y: torch.Tensor, cum: torch.Tensor, strict: bool = False) -> torch.Tensor:
    """``A_tj = sum_d x_t[d] y_j[d] exp(G_t[d] - G_j[d])`` for ``j <= t`` (``j < t`` when ``strict``), 0
    elsewhere (exact zeros, so a non-finite ``y_j`` after ``t`` never reaches row ``t``).

    Args:
        x, y: [..., c, Dk]; cum: [..., c, Dk] the in-chunk cumulative log decay ``G`` (non-increasing).

    Returns: [..., c, c]. Built by halving: a block of ``2h`` tokens is its two halves' blocks on the
    diagonal plus the quadrant ``t`` in the second half, ``j`` in the first, which factors through the
    first half's last token ``m``: ``(x_t e^{G_t - G_m}) . (y_j e^{G_m - G_j})``, one GEMM with both
    exponents <= 0 (``G`` is non-increasing). The ``1 x 1`` blocks are ``x_t . y_t`` (0 when ``strict``).
    So every exponent is <= 0 and the work is ``log2(c)`` elementwise passes over [c, Dk] plus GEMMs,
    not a [c, c, Dk] tensor. A chunk that is not a power of two is padded at its end (sliced off).
    """
    chunk = x.shape[-2]
    size = 1 << (chunk - 1).bit_length()
    if size != chunk:  # padded tokens: zero x, y and no decay
        x, y = (torch.nn.functional.pad(t, (0, 0, 0, size - chunk)) for t in (x, y))
        cum = torch.cat([cum, cum[..., -1:, :].expand(*cum.shape[:-2], size - chunk, cum.shape[-1])], -2)
    scores = _DecayedScores.apply(x.contiguous(), y.contiguous(), cum.contiguous(), strict)
    return scores[..., :chunk, :chunk]


class _DecayedScores(torch.autograd.Function):
    """:func:`decayed_scores` on a power-of-two chunk, level by level into one [..., c, c] buffer; the
    backward recomputes each level's factors (nothing saved per level) and accumulates in place:
    ``dL = dQ E``, ``dE = dQ^T L``, ``dx = dL e^{G_t - G_m}``, ``dy = dE e^{G_m - G_j}``, ``dG_t = dL L``,
    ``dG_j = -dE E``; the reference ``G_m`` cancels in ``Q = L E^T``, so it takes no gradient."""

    @staticmethod
    def forward(ctx, x, y, cum, strict):  # noqa: ANN001 - autograd signature
        ctx.save_for_backward(x, y, cum)
        ctx.strict = strict
        scores = x.new_zeros(*x.shape[:-1], x.shape[-2])
        if not strict:
            scores.diagonal(dim1=-2, dim2=-1).copy_((x * y).sum(-1))
        for half, (later, _), (earlier, _), _ in _levels(x, y, cum):
            _quadrants(scores, half).copy_(later @ earlier.transpose(-1, -2))
        return scores

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001
        x, y, cum = ctx.saved_tensors
        grad = grad.contiguous()
        grads = [torch.zeros_like(t) for t in (x, y, cum)]
        if not ctx.strict:
            diagonal = grad.diagonal(dim1=-2, dim2=-1).unsqueeze(-1)
            grads[0] += diagonal * y
            grads[1] += diagonal * x
        for half, (later, later_decay), (earlier, earlier_decay), views in _levels(x, y, cum, *grads):
            grad_x, grad_y, grad_cum = views
            grad_quadrant = _quadrants(grad, half)
            grad_later = grad_quadrant @ earlier
            grad_earlier = grad_quadrant.transpose(-1, -2) @ later
            grad_x[..., 1, :, :] += grad_later * later_decay
            grad_y[..., 0, :, :] += grad_earlier * earlier_decay
            from_later, from_earlier = grad_later * later, grad_earlier * earlier
            grad_cum[..., 1, :, :] += from_later
            grad_cum[..., 0, :, :] -= from_earlier
        return *grads, None


def _levels(x: torch.Tensor, y: torch.Tensor, cum: torch.Tensor, *grads: torch.Tensor):  # noqa: ANN202
    """Per halving level ``h`` (1, 2, 4, ...): the second halves' ``(x_t e^{G_t - G_m}, e^{G_t - G_m})``,
    the first halves' ``(y_j e^{G_m - G_j}, e^{G_m - G_j})`` [..., pairs, h, Dk] and ``grads`` viewed as
    [..., pairs, 2, h, Dk]."""
    size = x.shape[-2]
    half = 1
    while half < size:
        xs, ys, gs, *views = (t.unflatten(-2, (size // (2 * half), 2, half)) for t in (x, y, cum, *grads))
        reference = gs[..., 0, -1:, :]
        later_decay = (gs[..., 1, :, :] - reference).exp()
        earlier_decay = (reference - gs[..., 0, :, :]).exp()
        yield half, (xs[..., 1, :, :] * later_decay, later_decay), (ys[..., 0, :, :] * earlier_decay,
                                                                    earlier_decay), views
        half *= 2


def _quadrants(scores: torch.Tensor, half: int) -> torch.Tensor:
    """The view [..., pairs, h, h] of [..., c, c] at rows in the second half, columns in the first half,
    of every pair of ``h``-token blocks."""
    pairs = scores.shape[-1] // (2 * half)
    blocks = scores.unflatten(-1, (pairs, 2, half)).unflatten(-4, (pairs, 2, half))  # [..., P, 2, h, P, 2, h]
    return blocks[..., 1, :, :, 0, :].diagonal(dim1=-4, dim2=-2).movedim(-1, -3)


def causal_attend(scores: torch.Tensor, values: torch.Tensor, finite: bool) -> torch.Tensor:
    """``scores @ values`` per chunk ([..., c, c] lower triangular, [..., c, Dv]) where a non-finite
    ``values_j`` reaches only the rows ``t >= j`` (:func:`masked_attend` with the causal mask)."""
    causal = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
    return masked_attend(scores, causal, values, finite)


def masked_attend(
    scores: torch.Tensor, reads: torch.Tensor, values: torch.Tensor, finite: bool
) -> torch.Tensor:
    """``scores @ values`` ([..., c, c] zero outside ``reads``, [..., c, Dv]) where a non-finite ``values_j``
    reaches only the rows that read ``j`` (NaN there, as the token loop gives): ``finite`` says the inputs
    are all finite, else the product runs on the finite part and marks the rows it reaches."""
    if finite:
        return scores @ values
    finite_values = torch.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    reached = reads.to(values.dtype) @ (values != finite_values).to(values.dtype)
    return (scores @ finite_values).masked_fill(reached > 0, math.nan)


def segment_chunks(lengths: Sequence[int], chunk: int, n_chunks: int) -> tuple[list[int], list[int]]:
    """The first and the last chunk of every segment (chunks never straddle a segment boundary; the
    last segment holds the rest, end padding included)."""
    counts = [n // chunk for n in lengths[:-1]]
    counts.append(n_chunks - sum(counts))
    firsts = list(itertools.accumulate(counts[:-1], initial=0))
    return firsts, [first + count - 1 for first, count in zip(firsts, counts, strict=True)]


def to_chunks(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """[B, H, T, ...] -> [B, H, n, c, ...] padded with zeros at the end (zero keys write nothing, zero
    log decays keep the state)."""
    seq_len = x.shape[2]
    n_chunks = -(-seq_len // chunk)
    pad = [0, 0] * (x.dim() - 3) + [0, n_chunks * chunk - seq_len]
    return torch.nn.functional.pad(x, pad).unflatten(2, (n_chunks, chunk))


def from_chunks(x: torch.Tensor, seq_len: int) -> torch.Tensor:
    """[B, H, n, c, ...] -> [B, H, T, ...], the end padding dropped."""
    return x.flatten(2, 3)[:, :, :seq_len]
