"""Memory Caching over deep (MLP) memories: ``dla`` and ``titans`` (DESIGN.md §3-§6).

:func:`deep_memory_caching` validates its inputs and dispatches to the naive definition
(:mod:`.naive`), the chunk-parallel path (:mod:`.chunk`) or, when a ``cache`` is given, the
token-by-token decode step (:mod:`.recurrent`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mcrnn.ops.deep import network
from mcrnn.ops.deep.chunk import chunk_deep_memory_caching
from mcrnn.ops.deep.naive import naive_deep_memory_caching
from mcrnn.ops.deep.network import MEMORIES, layer_shapes
from mcrnn.ops.deep.recurrent import DeepMemoryCache, recurrent_deep_memory_caching
from mcrnn.ops.segments import check_choice, check_options, check_qkv, compute_dtype, resolve_segment_lengths

__all__ = ["DeepMemoryCache", "MEMORIES", "deep_memory_caching", "layer_shapes"]

BACKENDS = ("auto", "naive", "torch")


def deep_memory_caching(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor | None = None,
    *,
    memory: str,
    params: Sequence[torch.Tensor],
    eta: torch.Tensor,
    alpha: torch.Tensor,
    beta: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    segment_size: int | None = None,
    segment_lengths: Sequence[int] | None = None,
    segmentation: str = "constant",
    chunk_size: int = 64,
    aggregation: str = "grm",
    init: str = "checkpoint",
    top_k: int | None = None,
    pooling: str = "mean",
    cache: DeepMemoryCache | None = None,
    output_cache: bool = False,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, DeepMemoryCache]:
    """Memory Caching with a deep memory ``f(x) = x + W_L gelu(... gelu(W_1 x))`` per head.

    Inner rule per token (chunks of ``chunk_size`` tokens from each segment's start, every gradient
    of a chunk at the chunk-start weights ``theta_0``; see :mod:`mcrnn.ops.deep.naive`):

    - ``dla``:    ``theta_t = a_t theta_{t-1} - eta_t grad(-<f(k_t), v_t>)(theta_0)``;
    - ``titans``: ``S_t = b_t S_{t-1} - eta_t grad ||f(k_t) - v_t||^2 (theta_0)``,
      ``theta_t = a_t theta_{t-1} + S_t``.

    Token ``t`` reads ``theta_t`` (its own write included, never a later token). The cached states
    are the weights at segment ends; ``aggregation`` combines them as in DESIGN.md §3 (``soup``
    mixes the weights per layer and reads once; momentum is never mixed).

    Args:
        q, k: [B, T, H, Dk] queries and keys (normalise keys for stable updates); v: [B, T, H, Dv].
        u: [B, T, H, Dk] router queries (``None``: ``u = q``).
        memory: ``"dla"`` or ``"titans"``.
        params: initial weights, one ``[H, d_out, d_in]`` tensor per layer (see
            :func:`layer_shapes`); depth ``len(params)``, depth 1 being a matrix memory ``f(x) = W x``.
        eta: [B, T, H] step sizes (>= 0); alpha: [B, T, H] retention in (0, 1];
        beta: [B, T, H] momentum in [0, 1] (``titans`` only; required there).
        mask: [B, T] bool, the tokens that write (``None``: all). A masked token (padding) is an
            identity step: no write, no retention, no momentum change (``theta_t = theta_{t-1}``,
            ``S_t = S_{t-1}``); it still reads, counts for chunk and segment boundaries, and its key
            still enters the router contexts (the layer zeroes padded keys).
        segment_size / segment_lengths: constant segments (a multiple of ``chunk_size``) or explicit
            lengths (each a multiple of ``chunk_size`` except the last; with a cache, or when their
            sum exceeds T, they describe the whole stream from its first token); neither: one segment.
        segmentation: only ``"constant"`` (the segments above); the per-token ``log`` partition of
            the matrix memories is not offered for deep memories.
        chunk_size: inner mini-batch ``b >= 1``.
        aggregation, init, top_k, pooling: as in DESIGN.md §3-§4.
        cache: a :class:`DeepMemoryCache` to continue (decoding); output_cache: also return the cache.
        backend: ``"auto"``/``"torch"`` (chunk path, or the decode step when a cache is given) or
            ``"naive"`` (the token-loop definition, no cache).

    Returns:
        ``o`` [B, T, H, Dv] in ``q``'s dtype, and the cache when ``output_cache``.
    """
    check_choice("memory", memory, MEMORIES)
    check_choice("backend", backend, BACKENDS)
    if segmentation != "constant":
        raise ValueError(f"deep memories support segmentation='constant' only, got {segmentation!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    if memory == "titans" and beta is None:
        raise ValueError("memory='titans' needs beta (momentum [B, T, H])")
    if memory == "dla" and beta is not None:
        raise ValueError("beta is the titans momentum; memory='dla' takes beta=None")
    check_qkv(q, k, v, u, {"eta": eta, "alpha": alpha, "beta": beta})
    check_options(aggregation, init, pooling, top_k)
    batch, seq_len, heads, key_dim = q.shape
    if seq_len == 0:
        raise ValueError("q must have at least one token (T >= 1)")
    network.check_params(params, heads, key_dim, v.shape[-1])
    is_mask = isinstance(mask, torch.Tensor) and mask.dtype == torch.bool
    if mask is not None and (not is_mask or tuple(mask.shape) != (batch, seq_len)):
        raise ValueError(f"mask must be a bool [B, T]={batch, seq_len} tensor or None")
    if segment_size is not None and not isinstance(segment_size, bool) and isinstance(segment_size, int):
        if segment_size % chunk_size:
            raise ValueError(f"segment_size={segment_size} must be a multiple of chunk_size={chunk_size}")
    if segment_lengths is not None and any(int(n) % chunk_size for n in list(segment_lengths)[:-1]):
        raise ValueError(
            f"segment_lengths {list(segment_lengths)} must be multiples of chunk_size={chunk_size}"
        )
    if backend == "naive" and (cache is not None or output_cache):
        raise ValueError("backend='naive' has no cache; use backend='auto' for decoding")
    in_dtype, dtype = q.dtype, compute_dtype(q, k, v, u, eta, alpha, beta, *params)
    q, k, v, eta, alpha = (x.to(dtype) for x in (q, k, v, eta, alpha))
    u = q if u is None else u.to(dtype)
    beta = beta.to(dtype) if beta is not None else None
    params = [w.to(dtype) for w in params]
    gates = {"eta": eta, "alpha": alpha, "beta": beta, "mask": mask}
    options = {"aggregation": aggregation, "init": init, "top_k": top_k, "pooling": pooling}
    if cache is not None:
        if cache.memory != memory or cache.chunk_size != chunk_size:
            raise ValueError(f"cache is for memory={cache.memory!r}, chunk_size={cache.chunk_size}")
        if segment_size is None and segment_lengths is None and cache.cached:
            raise ValueError("cache has segments; pass the segment_size/segment_lengths it was built with")
        out, cache = recurrent_deep_memory_caching(
            q,
            k,
            v,
            u,
            cache,
            params=params,
            **gates,
            segment_size=segment_size,
            segment_lengths=segment_lengths,
            **options,
        )
        return (out.to(in_dtype), cache) if output_cache else out.to(in_dtype)
    if segment_lengths is not None and sum(segment_lengths) > seq_len:
        segment_lengths = _truncate(segment_lengths, seq_len)
    lengths = resolve_segment_lengths(seq_len, segment_size, segment_lengths)
    if backend == "naive":
        out = naive_deep_memory_caching(
            q, k, v, u, lengths, memory=memory, params=params, **gates, chunk_size=chunk_size, **options
        )
        return out.to(in_dtype)
    result = chunk_deep_memory_caching(
        q, k, v, u, lengths, memory=memory, params=params, **gates, chunk_size=chunk_size, **options
    )
    if not output_cache:
        return result.output.to(in_dtype)
    ends = torch.tensor([0, *lengths]).cumsum(0).tolist()
    sums = [k[:, a:b].sum(1) for a, b in zip(ends[:-1], ends[1:], strict=True)]
    new_cache = DeepMemoryCache(
        memory=memory,
        chunk_size=chunk_size,
        weights=result.weights,
        momentum=result.momentum,
        chunk_start=result.chunk_start,
        key_sum=sums[-1],
        key_count=lengths[-1],
        position=seq_len,
        segment_start=ends[-2],
        cached=result.cached,
        context_sums=sums[:-1],
        context_counts=lengths[:-1],
    )
    return result.output.to(in_dtype), new_cache


def _truncate(lengths: Sequence[int], seq_len: int) -> list[int]:
    """The first segments of a whole-stream ``lengths`` that cover ``seq_len`` tokens (last one cut)."""
    out, total = [], 0
    for n in lengths:
        if total >= seq_len:
            break
        out.append(min(int(n), seq_len - total))
        total += out[-1]
    return out
