"""The ``kda`` write rule (Kimi Delta Attention), chunkwise: online reads, states at segment ends and the
pseudo-values, no token loop.

Per head, the delta rule after a decay per key channel (fla's ``naive_recurrent_kda``)::

    M'_t = Diag(exp(g_t)) M_{t-1},   M_t = M'_t + b_t k_t (v_t - M'_t^T k_t)^T,   o_t = q_t^T M_t

is a linear write of the pseudo-value ``w_t = b_t (v_t - M'_t^T k_t)``: ``M_t = Diag(a_t) M_{t-1} +
k_t w_t^T``. Inside a chunk entered with state ``S``, ``G_t`` the in-chunk cumulative log decay per
channel and ``D(x, y)_tj = sum_d x_t[d] y_j[d] exp(G_t[d] - G_j[d])`` (:func:`~mcrnn.ops.gla.chunk.
decayed_scores`, every exponent <= 0), the pseudo-values solve one unit lower-triangular system (the UT
transform of the delta rule, DESIGN.md §6, with the scalar decay ratio replaced by ``D``)::

    (I + A) W = diag(b) V - diag(b) (K * e^G) S,   A_tj = b_t D(k, k)_tj  (j < t)

so ``W = W_1 - W_2 S``; the chunk reads ``o_t = (q_t * e^{G_t})^T S + sum_{j<=t} D(q, k)_tj w_j`` and
leaves ``S' = (Diag(e^{G_c}) - K~^T W_2) S + K~^T W_1`` with ``K~_j = k_j * e^{G_c - G_j}``: the
chunk-to-chunk recurrence of the delta rule (a loop over chunks, not tokens). ``q`` is not scaled.
Tensors are heads-first ([B, H, T, D]) inside this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from mcrnn.ops.delta.chunk import chunk_recurrence
from mcrnn.ops.gla.chunk import (
    causal_attend,
    decayed_scores,
    from_chunks,
    log_gla_mc,
    segment_chunks,
    to_chunks,
)
from mcrnn.ops.inputs import all_finite, full_precision, to_compute_dtype
from mcrnn.ops.linear.chunk import chunk_size_for, heads_first
from mcrnn.ops.read.fenwick_cache import FenwickMemoryCache, fenwick_prefill_cache
from mcrnn.ops.read.matrix import mix_cached_reads
from mcrnn.ops.read.matrix_cache import MatrixMemoryCache, prefill_cache
from mcrnn.ops.spec import DEFAULT_CHUNK_SIZE, MCSpec


def chunk_kda_mc(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor | None = None,
    *,
    spec: MCSpec,
    log_decay: torch.Tensor,
    beta: torch.Tensor,
    output_cache: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, MatrixMemoryCache | FenwickMemoryCache | None]:
    """Parallel MC over the ``kda`` memory (inputs as :func:`mcrnn.ops.memory_caching`, not re-checked).

    ``y_t = g_{t,s} q_t^T M_t + sum_{i < s} g_{t,i} q_t^T M(i)`` with the weights of
    :func:`~mcrnn.ops.read.segments.router_gates` and the segments of ``spec``. With the log segmentation
    (``init="checkpoint"``) every bucket state is a prefix state ``M_t = Diag(a_t) M_{t-1} + k_t w_t^T``,
    so the Fenwick read of ``gla`` (:func:`mcrnn.ops.gla.chunk.log_gla_mc`) runs on the pseudo-values.

    Args:
        q, k, u: [B, T, H, Dk] (``u`` None: ``u = q``; ``q`` is not scaled); v: [B, T, H, Dv].
        log_decay: [B, T, H, Dk] ``g_t`` (finite, <= 0); beta: [B, T, H] ``b_t`` in [0, 1].
        chunk_size: the largest inner chunk (the path picks one dividing every segment but the last).

    Returns: ``o`` [B, T, H, Dv] in ``q``'s dtype (states accumulate in float32, float64 for float64
    inputs) and, with ``output_cache``, the decoding cache (a ``FenwickMemoryCache`` for ``log``).
    """
    (qc, kc, vc, uc), gates, _ = to_compute_dtype(q, k, v, u, {"log_decay": log_decay, "beta": beta})
    log_decay = gates["log_decay"]
    qh, kh, vh, decay_h = (heads_first(x) for x in (qc, kc, vc, log_decay))
    beta_h = gates["beta"].transpose(1, 2)
    if spec.kind == "log":  # checkpoint: every bucket state is a prefix state
        with full_precision(q.device):
            _, _, pseudo_v = chunk_kda(qh, kh, vh, beta_h, decay_h, [q.shape[1]], "checkpoint", chunk_size)
            pseudo_v = pseudo_v.transpose(1, 2)
            out = log_gla_mc(qc, uc, kc, pseudo_v, log_decay, spec=spec, chunk_size=chunk_size)
        cache = None
        if output_cache:
            cache = replace(fenwick_prefill_cache(spec, kc, pseudo_v, log_decay), memory="kda")
        return out.to(q.dtype), cache
    lengths = spec.lengths(q.shape[1])
    with full_precision(q.device):
        online, states, _ = chunk_kda(qh, kh, vh, beta_h, decay_h, lengths, spec.init, chunk_size)
        out = mix_cached_reads(qh, uc, kc, online, states, lengths, spec)
    cache = prefill_cache(spec, "kda", states.transpose(1, 2), k, v, lengths) if output_cache else None
    return out.to(q.dtype), cache


def chunk_kda(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    log_decay: torch.Tensor,
    lengths: Sequence[int],
    init: str,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """KDA inside segments, chunkwise (module docstring).

    Args:
        q, k: [B, H, T, Dk]; v: [B, H, T, Dv]; beta: [B, H, T]; log_decay: [B, H, T, Dk] (<= 0).
        lengths: segment lengths summing to T; init: ``checkpoint`` or ``independent``.

    Returns: ``online`` [B, H, T, Dv] with ``o_t = q_t^T M_t``, ``states`` [B, H, N, Dk, Dv], the state at
    the end of every segment, and the pseudo-values ``w`` [B, H, T, Dv] (``M_t = Diag(a_t) M_{t-1} +
    k_t w_t^T``).
    """
    seq_len, key_dim, value_dim = q.shape[2], q.shape[-1], v.shape[-1]
    chunk = chunk_size_for(lengths, chunk_size)
    finite = all_finite(q, k, v)
    # padded tokens have k = 0, b = 0 and g = 0: they leave the state unchanged
    q, k, v, log_decay = (to_chunks(x, chunk) for x in (q, k, v, log_decay))
    beta = to_chunks(beta, chunk).unsqueeze(-1)
    cum = log_decay.cumsum(-2)
    last = cum[..., -1:, :]
    system = beta * decayed_scores(k, k, cum, strict=True)  # only the strict lower triangle is read
    solved = torch.linalg.solve_triangular(
        system, torch.cat([beta * v, beta * k * cum.exp()], dim=-1), upper=False, unitriangular=True
    )
    base_w, state_w = solved.split([value_dim, key_dim], dim=-1)
    end_k = k * (last - cum).exp()  # K~
    written, erased = (end_k.transpose(-1, -2) @ solved).split([value_dim, key_dim], dim=-1)
    transition = torch.diag_embed(last.squeeze(-2).exp()) - erased  # [B, H, n, Dk, Dk]
    firsts, lasts = segment_chunks(lengths, chunk, q.shape[2])
    entering, ends = chunk_recurrence(transition, written, set(firsts) if init == "independent" else {0})
    pseudo_v = base_w - state_w @ entering
    online = causal_attend(decayed_scores(q, k, cum), pseudo_v, finite) + (q * cum.exp()) @ entering
    return from_chunks(online, seq_len), ends[:, :, lasts], from_chunks(pseudo_v, seq_len)
