"""MC over delta-rule memories, parallel form: the chunkwise WY / UT transform, no token loop.

Per head the delta rule ``M_t = a_t (I - b_t k_t k_t^T) M_{t-1} + b_t k_t v_t^T`` is a linear write of
the pseudo-value ``w_t = b_t (v_t - a_t M_{t-1}^T k_t)``: ``M_t = a_t M_{t-1} + k_t w_t^T``. Inside a
chunk of ``c`` tokens entered with state ``S``, with ``gamma_t = prod_{j<=t} a_j`` (in-chunk), the
pseudo-values solve one unit lower-triangular system (the UT transform)::

    (I + A) W = diag(b) V - diag(b gamma) K S,   A_tj = b_t (gamma_t / gamma_j) k_t.k_j  (j < t)

so ``W = W_1 - W_2 S`` with ``[W_1 | W_2] = (I + A)^{-1} [diag(b) V | diag(b gamma) K]``. The chunk reads
``o_t = gamma_t q_t^T S + sum_{j<=t} (gamma_t / gamma_j) (q_t.k_j) w_t`` and leaves the state
``S' = (gamma_c I - K~^T W_2) S + K~^T W_1`` with ``K~_j = (gamma_c / gamma_j) k_j``. Everything but this
chunk-to-chunk recurrence is batched over chunks; the recurrence is a loop over chunks (one small
matmul each). Chunks never straddle a segment; ``init="independent"`` restarts ``S = 0`` at every
segment start. The cached states (segment ends) are read by the shared read side
(:mod:`mcrnn.ops.read.matrix`: dense or ``ssc``-selected reads), exactly as for ``linear``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import replace

import torch

from mcrnn.ops.inputs import full_precision, to_compute_dtype
from mcrnn.ops.linear.chunk import chunk_size_for, heads_first, log_linear_mc
from mcrnn.ops.read.fenwick_cache import FenwickMemoryCache, fenwick_prefill_cache
from mcrnn.ops.read.matrix import mix_cached_reads
from mcrnn.ops.read.matrix_cache import MatrixMemoryCache, prefill_cache
from mcrnn.ops.spec import DEFAULT_CHUNK_SIZE, MCSpec


def chunk_delta_mc(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor | None = None,
    *,
    spec: MCSpec,
    memory: str = "gated_deltanet",
    log_decay: torch.Tensor | None = None,
    beta: torch.Tensor,
    output_cache: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, MatrixMemoryCache | FenwickMemoryCache | None]:
    """Parallel MC over a delta-rule memory (inputs as :func:`mcrnn.ops.memory_caching`, not re-checked).

    ``y_t = g_{t,s} q_t^T M_t + sum_{i < s} g_{t,i} q_t^T M(i)`` with the weights of
    :func:`~mcrnn.ops.read.segments.router_gates` and the segments of ``spec``. With the log segmentation
    (``init="checkpoint"``) every bucket state is a prefix state ``M_t = a_t M_{t-1} + k_t w_t^T``, so
    the Fenwick read of :func:`mcrnn.ops.linear.chunk.log_linear_mc` runs on the pseudo-values ``w_t``.

    Args:
        q, k, u: [B, T, H, Dk] (``u`` None: ``u = q``); v: [B, T, H, Dv].
        memory: ``deltanet`` or ``gated_deltanet`` (recorded in the cache).
        log_decay: [B, T, H] ``g_t <= 0`` or None (``deltanet``); beta: [B, T, H] ``b_t`` in [0, 1].
        chunk_size: the largest inner chunk (the path picks one dividing every segment but the last).

    Returns: ``o`` [B, T, H, Dv] in ``q``'s dtype (states accumulate in float32, float64 for float64
    inputs) and, with ``output_cache``, the decoding cache (a ``FenwickMemoryCache`` for ``log``).
    """
    (qc, kc, vc, uc), gates, _ = to_compute_dtype(q, k, v, u, {"log_decay": log_decay, "beta": beta})
    log_decay = gates["log_decay"]
    decay_h = None if log_decay is None else log_decay.transpose(1, 2)
    qh, kh, vh, beta_h = heads_first(qc), heads_first(kc), heads_first(vc), gates["beta"].transpose(1, 2)
    if spec.kind == "log":  # checkpoint: every bucket state is a prefix state of the delta rule
        _, _, pseudo_v = chunk_delta(qh, kh, vh, beta_h, decay_h, [q.shape[1]], "checkpoint", chunk_size)
        streams = [(kc, pseudo_v.transpose(1, 2))]
        with full_precision(q.device):
            out = log_linear_mc(qc, uc, kc, streams, log_decay, spec=spec, chunk_size=chunk_size)
        cache = None
        if output_cache:
            cache = replace(fenwick_prefill_cache(spec, kc, streams[0][1], log_decay), memory=memory)
        return out.to(q.dtype), cache
    lengths = spec.lengths(q.shape[1])
    online, states, _ = chunk_delta(qh, kh, vh, beta_h, decay_h, lengths, spec.init, chunk_size)
    out = mix_cached_reads(qh, uc, kc, online, states, lengths, spec)
    cache = prefill_cache(spec, memory, states.transpose(1, 2), k, v, lengths) if output_cache else None
    return out.to(q.dtype), cache


def chunk_delta(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    log_decay: torch.Tensor | None,
    lengths: Sequence[int],
    init: str,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (gated) delta rule inside segments, chunkwise (module docstring).

    Args:
        q, k: [B, H, T, Dk]; v: [B, H, T, Dv]; beta: [B, H, T]; log_decay: [B, H, T] (<= 0) or None.
        lengths: segment lengths summing to T; init: ``checkpoint`` or ``independent``.

    Returns: ``online`` [B, H, T, Dv] with ``o_t = q_t^T M_t``, ``states`` [B, H, N, Dk, Dv], the
    state at the end of every segment, and the pseudo-values ``w`` [B, H, T, Dv] (``M_t = a_t M_{t-1} +
    k_t w_t^T``).
    """
    batch, heads, seq_len, key_dim = q.shape
    value_dim = v.shape[-1]
    chunk = chunk_size_for(lengths, chunk_size)
    n_chunks = -(-seq_len // chunk)
    pad = n_chunks * chunk - seq_len
    if pad:  # padded tokens have k = 0 and b = 0: they leave the state unchanged
        q, k, v = (torch.nn.functional.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        beta = torch.nn.functional.pad(beta, (0, pad))
        if log_decay is not None:
            log_decay = torch.nn.functional.pad(log_decay, (0, pad))
    q, k, v = (x.reshape(batch, heads, n_chunks, chunk, x.shape[-1]) for x in (q, k, v))
    beta = beta.reshape(batch, heads, n_chunks, chunk, 1)
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
    write_k = beta * k
    write_v = beta * v
    # only the strictly lower triangle of ``system`` is read: the solve takes a unit diagonal
    system = write_k @ k.transpose(-1, -2)  # b_t k_t.k_j
    scores = q @ k.transpose(-1, -2)
    if log_decay is None:
        end_k = k
        scores = scores.masked_fill(~causal, 0.0)
        transition = torch.eye(key_dim, dtype=q.dtype, device=q.device)
    else:
        cum = log_decay.reshape(batch, heads, n_chunks, chunk).cumsum(-1)
        ratio = (cum.unsqueeze(-1) - cum.unsqueeze(-2)).masked_fill(~causal, float("-inf")).exp()
        system = system * ratio
        scores = scores * ratio
        decay_in = cum.exp().unsqueeze(-1)  # gamma_t
        write_k = write_k * decay_in
        end_k = k * (cum[..., -1:] - cum).exp().unsqueeze(-1)  # (gamma_c / gamma_j) k_j
        transition = cum[..., -1, None, None].exp() * torch.eye(key_dim, dtype=q.dtype, device=q.device)
    solved = torch.linalg.solve_triangular(
        system, torch.cat([write_v, write_k], dim=-1), upper=False, unitriangular=True
    )
    base_w, state_w = solved.split([value_dim, key_dim], dim=-1)
    written, erased = (end_k.transpose(-1, -2) @ solved).split([value_dim, key_dim], dim=-1)
    transition = transition - erased  # [B, H, n, Dk, Dk]; written: [B, H, n, Dk, Dv]
    # chunks never straddle a segment: the first chunk of each segment, and which start from zero
    firsts = list(itertools.accumulate((n // chunk for n in lengths[:-1]), initial=0))
    resets = set(firsts) if init == "independent" else {0}
    entering, ends = chunk_recurrence(transition, written, resets)
    pseudo_v = base_w - state_w @ entering
    inter = q @ entering
    if log_decay is not None:
        inter = inter * decay_in
    online = scores @ pseudo_v + inter
    online, pseudo_v = (
        x.reshape(batch, heads, n_chunks * chunk, value_dim)[:, :, :seq_len] for x in (online, pseudo_v)
    )
    return online, ends[:, :, [first - 1 for first in firsts[1:]] + [n_chunks - 1]], pseudo_v


def chunk_recurrence(
    transition: torch.Tensor, written: torch.Tensor, resets: set[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``E_n = P_n S_n + Q_n`` with ``S_n = E_{n-1}`` (0 at the chunks in ``resets``): a loop over chunks.

    Args:
        transition: ``P`` [B, H, n, Dk, Dk]; written: ``Q`` [B, H, n, Dk, Dv].

    Returns: the states entering (``S``) and ending (``E``) every chunk, [B, H, n, Dk, Dv] each.
    """
    batch, heads, _, key_dim, value_dim = written.shape
    entering, ends = [], []
    state = written.new_zeros(batch * heads, key_dim, value_dim)
    pairs = zip(transition.flatten(0, 1).unbind(1), written.flatten(0, 1).unbind(1), strict=True)
    for n, (step, write) in enumerate(pairs):
        if n in resets:
            state = torch.zeros_like(state)
            entering.append(state)
            state = write
        else:
            entering.append(state)
            state = torch.baddbmm(write, step, state)
        ends.append(state)
    shape = (batch, heads, len(ends), key_dim, value_dim)
    return torch.stack(entering, dim=1).view(shape), torch.stack(ends, dim=1).view(shape)
