"""The public op: ``memory_caching(q, k, v, u, ...)`` over every memory family.

Checks the arguments once, resolves the segmentation, casts to the accumulation dtype and hands
over to the memory family's implementation (naive token loop, parallel PyTorch, Triton, or the
recurrent decoding step when a cache is passed in).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mcrnn.ops.deep import MEMORIES as DEEP_MEMORIES
from mcrnn.ops.deep import DeepMemoryCache, deep_memory_caching
from mcrnn.ops.linear.log import fenwick_prefill_cache, log_linear_mc
from mcrnn.ops.linear.naive import naive_log_memory_caching, naive_memory_caching
from mcrnn.ops.linear.op import parallel_linear_mc, recurrent_linear_mc, triton_linear_mc
from mcrnn.ops.linear.recurrent import FenwickMemoryCache, MatrixMemoryCache, fenwick_step
from mcrnn.ops.segments import (
    SEGMENTATIONS,
    check_choice,
    check_options,
    check_qkv,
    compute_dtype,
    resolve_segment_lengths,
)

MATRIX_MEMORIES = ("linear", "swla")
BACKENDS = ("auto", "naive", "torch", "triton")


def memory_caching(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor | None = None,
    *,
    segment_size: int | None = None,
    segment_lengths: Sequence[int] | None = None,
    segmentation: str = "constant",
    aggregation: str = "grm",
    init: str = "checkpoint",
    top_k: int | None = None,
    pooling: str = "mean",
    memory: str = "linear",
    log_decay: torch.Tensor | None = None,
    prev_gate: torch.Tensor | None = None,
    cur_gate: torch.Tensor | None = None,
    params: Sequence[torch.Tensor] | None = None,
    eta: torch.Tensor | None = None,
    alpha: torch.Tensor | None = None,
    beta: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    cache: MatrixMemoryCache | FenwickMemoryCache | DeepMemoryCache | None = None,
    output_cache: bool = False,
    backend: str = "auto",
    chunk_size: int = 64,
) -> torch.Tensor | tuple[torch.Tensor, MatrixMemoryCache | FenwickMemoryCache | DeepMemoryCache]:
    """Memory Caching over a matrix memory (DESIGN.md §3-§6).

    Per head, token ``t`` in segment ``s`` with online state ``M_t`` and cached states ``M(i)``::

        residual: y_t = q_t^T M_t + sum_{i<s} q_t^T M(i)
        grm/soup: y_t = sum_{i<=s} g_{t,i} q_t^T M(i),  g_t = softmax_i <u_t, c_i>,  M(s) := M_t
        ssc:      as grm over the top_k cached segments by <u_t, c_i> plus the online one
        average:  y_t = (1/s) sum_{i<=s} q_t^T M(i)

    with ``M_t = a_t M_{t-1} + k_t v_t^T`` (``linear``, ``a_t = exp(log_decay_t)``, 1 if None) or
    ``M_t = a_t M_{t-1} + b_t k_{t-1} v_{t-1}^T + l_t k_t v_t^T`` (``swla``; ``b = prev_gate``,
    ``l = cur_gate``), ``c_i`` the mean (or sum, ``pooling="sum"``) of segment i's keys, and the online
    context the causal pool of the current segment's keys up to ``t``.

    Args:
        q, k: [B, T, H, Dk]; v: [B, T, H, Dv]; u: [B, T, H, Dk] router queries (None: ``u = q``).
        segment_size: constant segments (the last may be shorter); ``segment_lengths``: explicit
            lengths summing to T; neither: one segment (the base memory).
        segmentation: ``constant`` (the segments above) or ``log``: the per-token Fenwick partition
            of DESIGN.md §5 (token t reads one bucket per binary digit of t + 1; ``linear`` memory
            only; with ``grm`` it is the paper's Log-Linear++).
        aggregation: ``residual | grm | soup | ssc | average`` (``soup == grm`` for matrix memories).
        init: ``checkpoint`` (a segment continues from the previous state) or ``independent``
            (each segment restarts from zero).
        top_k: cached segments each token reads under ``ssc``.
        pooling: ``mean | sum`` router-key pooling.
        memory: ``linear | swla`` (matrix memories) or ``dla | titans`` (deep memories, forwarded to
            :func:`mcrnn.ops.deep.deep_memory_caching` with ``params, eta, alpha, beta``).
        log_decay: [B, T, H] log of the decay ``a_t`` (<= 0) or None.
        prev_gate, cur_gate: [B, T, H] the ``swla`` gates ``b_t, l_t``.
        params, eta, alpha, beta: deep memories' initial weights (one [H, d_out, d_in] per layer),
            step size, retention and (Titans) momentum [B, T, H]; see ``deep_memory_caching``.
        mask: deep memories: [B, T] bool, the tokens that write (a masked token, e.g. padding, is
            an identity step); see ``deep_memory_caching``.
        cache: continue decoding from this cache (token by token, the recurrent form).
        output_cache: also return the cache after the last token.
        backend: ``auto`` (Triton on CUDA when available, else PyTorch), ``naive`` (token loop),
            ``torch`` (parallel PyTorch), ``triton``.
        chunk_size: inner chunk length of the parallel path.

    Returns:
        ``o`` [B, T, H, Dv] in the dtype of ``q`` (state accumulates in float32, float64 for float64
        inputs), or ``(o, cache)`` with ``output_cache=True``.
    """
    check_choice("memory", memory, MATRIX_MEMORIES + DEEP_MEMORIES)
    if memory in DEEP_MEMORIES:
        if log_decay is not None or prev_gate is not None or cur_gate is not None:
            raise ValueError(
                "log_decay/prev_gate/cur_gate are matrix-memory gates; deep memories take eta, alpha and beta"
            )
        if params is None or eta is None or alpha is None:
            raise ValueError(f"memory={memory!r} needs params (initial weights), eta and alpha")
        return deep_memory_caching(
            q, k, v, u, memory=memory, params=params, eta=eta, alpha=alpha, beta=beta, mask=mask,
            segment_size=segment_size, segment_lengths=segment_lengths, segmentation=segmentation,
            chunk_size=chunk_size, aggregation=aggregation, init=init, top_k=top_k, pooling=pooling,
            cache=cache, output_cache=output_cache, backend=backend,
        )  # fmt: skip
    if any(x is not None for x in (params, eta, alpha, beta, mask)):
        raise ValueError(f"params/eta/alpha/beta/mask belong to deep memories, not memory={memory!r}")
    check_choice("backend", backend, BACKENDS)
    check_choice("segmentation", segmentation, SEGMENTATIONS)
    check_options(aggregation, init, pooling, top_k)
    gates = {"log_decay": log_decay, "prev_gate": prev_gate, "cur_gate": cur_gate}
    check_qkv(q, k, v, u, gates)
    if memory == "swla" and (prev_gate is None or cur_gate is None):
        raise ValueError("memory='swla' needs prev_gate and cur_gate ([B, T, H] tensors in (0, 1))")
    if memory == "linear" and (prev_gate is not None or cur_gate is not None):
        raise ValueError("prev_gate/cur_gate are swla gates; memory='linear' takes only log_decay")
    if log_decay is not None and bool((log_decay > 0).any()):
        raise ValueError("log_decay must be <= 0 (a decay a_t = exp(log_decay) in (0, 1])")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    log_segments = segmentation == "log"
    if log_segments and (segment_size is not None or segment_lengths is not None):
        raise ValueError("segmentation='log' takes no segment_size or segment_lengths")
    if log_segments and memory != "linear":
        raise ValueError(f"segmentation='log' supports memory='linear', got {memory!r}")
    cache_type = FenwickMemoryCache if log_segments else MatrixMemoryCache
    if cache is not None and not isinstance(cache, cache_type):
        raise TypeError(f"cache must be a {cache_type.__name__}, got {type(cache).__name__}")
    seq_len = q.shape[1]
    lengths = None
    if cache is None and not log_segments:
        lengths = resolve_segment_lengths(seq_len, segment_size, segment_lengths)
    if seq_len == 0:
        raise ValueError("q must hold at least one token (T >= 1)")
    out_dtype = q.dtype
    u = q if u is None else u
    options = dict(aggregation=aggregation, init=init, top_k=top_k, pooling=pooling, memory=memory, **gates)
    if lengths is not None and _wants_triton(backend, q, k, v, u, *gates.values()):
        out, cache = triton_linear_mc(q, k, v, u, lengths, output_cache=output_cache, **options)
        out = out.to(out_dtype)
        return (out, cache) if output_cache else out
    dtype = compute_dtype(q, k, v, u)
    q, k, v, u = (x.to(dtype) for x in (q, k, v, u))
    options.update({name: None if g is None else g.to(dtype) for name, g in gates.items()})
    if log_segments:
        out, cache = _log_mc(q, k, v, u, cache, backend, output_cache, chunk_size, options)
    elif cache is not None:
        boundaries = _boundaries(segment_size, segment_lengths)
        out, cache = recurrent_linear_mc(q, k, v, u, cache, boundaries, **options)
    elif backend == "naive":
        out = naive_memory_caching(q, k, v, u, lengths, **options)
        if output_cache:
            _, cache = parallel_linear_mc(q, k, v, u, lengths, output_cache=True, **options)
    else:
        out, cache = parallel_linear_mc(
            q, k, v, u, lengths, output_cache=output_cache, chunk_size=chunk_size, **options
        )
    out = out.to(out_dtype)
    return (out, cache) if output_cache else out


def _log_mc(q, k, v, u, cache, backend, output_cache, chunk_size, options):  # noqa: ANN001, ANN202
    """Fenwick-segmented MC: decode from a cache, or the naive / parallel paths (+ prefill cache)."""
    options = {name: options[name] for name in ("aggregation", "init", "top_k", "pooling", "log_decay")}
    log_decay = options["log_decay"]
    if cache is not None:
        outputs = []
        for t in range(q.shape[1]):
            step = {**options, "log_decay": None if log_decay is None else log_decay[:, t]}
            y, cache = fenwick_step(q[:, t], k[:, t], v[:, t], u[:, t], cache, **step)
            outputs.append(y)
        return torch.stack(outputs, dim=1), cache
    if backend == "naive":
        out = naive_log_memory_caching(q, k, v, u, **options)
    else:
        out = log_linear_mc(q, k, v, u, chunk_size=chunk_size, **options)
    return out, fenwick_prefill_cache(k, v, log_decay, options["init"]) if output_cache else None


def _boundaries(segment_size: int | None, segment_lengths: Sequence[int] | None) -> set[int] | int | None:
    """Segment starts for decoding: a constant size, absolute start positions, or None."""
    if segment_lengths is not None:
        return set(torch.tensor(list(segment_lengths)).cumsum(0).tolist())
    if segment_size is not None:
        if isinstance(segment_size, bool) or not isinstance(segment_size, int) or segment_size < 1:
            raise ValueError(f"segment_size must be an int >= 1, got {segment_size!r}")
    return segment_size


def _wants_triton(backend: str, *tensors: torch.Tensor | None) -> bool:
    """Triton for ``backend="triton"``, or ``"auto"`` on CUDA tensors, when the kernels support the
    inputs (else the PyTorch path, with a one-time warning naming the reason)."""
    if backend not in ("auto", "triton") or (backend == "auto" and not tensors[0].is_cuda):
        return False
    from mcrnn.ops.linear import triton as mc_triton

    head_dims = (tensors[0].shape[-1], tensors[2].shape[-1])
    return mc_triton.use_triton(*tensors, head_dims=head_dims, requested=backend == "triton")
