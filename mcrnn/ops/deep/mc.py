"""The three entry points of MC over deep memories (``dla``, ``titans``), one signature shape.

Each takes [B, T, H, D] inputs (as :func:`mcrnn.ops.memory_caching`, not re-checked), an
:class:`~mcrnn.ops.spec.MCSpec`, the memory's initial weights ``params`` (one ``[H, d_out, d_in]``
per layer), the per-token rates ``eta, alpha, beta`` [B, T, H], an optional ``mask`` [B, T] (bool, the
tokens that write; a masked token, e.g. padding, is an identity step) and the inner chunk ``chunk_size``
(part of the model: every gradient of a chunk is taken at the chunk-start weights, DESIGN.md §6), and
returns ``(o [B, T, H, Dv] in q's dtype, cache or None)``:

- :func:`naive_deep_mc`: the definition, a loop over chunks and tokens (no cache);
- :func:`chunk_deep_mc`: the chunk-parallel path, optionally with the decoding cache (its outputs come
  from the definition when an input holds a NaN/Inf, so that such a value never reaches earlier tokens);
- :func:`recurrent_deep_mc`: token-by-token decoding from a :class:`DeepMemoryCache`.

With ``spec.segmentation == "log"`` (DESIGN.md §5) the three run :mod:`.log_naive`, :mod:`.log_chunk`
and :mod:`.log_recurrent` (the cache is then a :class:`DeepFenwickCache`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from mcrnn.ops.deep.chunk import chunk_deep_memory_caching
from mcrnn.ops.deep.log_chunk import chunk_deep_log_memory_caching
from mcrnn.ops.deep.log_naive import naive_deep_log_memory_caching
from mcrnn.ops.deep.log_recurrent import DeepFenwickCache, deep_fenwick_prefill, recurrent_deep_log
from mcrnn.ops.deep.naive import naive_deep_memory_caching
from mcrnn.ops.deep.recurrent import DeepMemoryCache, recurrent_deep_memory_caching
from mcrnn.ops.inputs import all_finite, full_precision, to_compute_dtype
from mcrnn.ops.spec import MCSpec

Rates = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


def _cast(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor | None,
    params: Sequence[torch.Tensor],
    rates: Rates,
) -> tuple[tuple[torch.Tensor, ...], list[torch.Tensor], Rates]:
    """Inputs, weights and rates in the accumulation dtype (``u = q`` when None)."""
    eta, alpha, beta = rates
    inputs, gates, dtype = to_compute_dtype(q, k, v, u, {"eta": eta, "alpha": alpha, "beta": beta}, *params)
    return inputs, [w.to(dtype) for w in params], tuple(gates.values())


def naive_deep_mc(
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
    beta: torch.Tensor | None = None,
    chunk_size: int,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, None]:
    """The definition (:mod:`mcrnn.ops.deep.naive`): ``o`` and no cache."""
    inputs, params, (eta, alpha, beta) = _cast(q, k, v, u, params, (eta, alpha, beta))
    options = {"memory": memory, "params": params, "eta": eta, "alpha": alpha, "beta": beta,
               "chunk_size": chunk_size, "aggregation": spec.aggregation, "init": spec.init,
               "top_k": spec.top_k, "pooling": spec.pooling, "mask": mask}  # fmt: skip
    if spec.kind == "log":
        out = naive_deep_log_memory_caching(*inputs, **options)
    else:
        out = naive_deep_memory_caching(*inputs, spec.lengths(q.shape[1]), **options)
    return out.to(q.dtype), None


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
    beta: torch.Tensor | None = None,
    chunk_size: int,
    output_cache: bool = False,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, DeepMemoryCache | DeepFenwickCache | None]:
    """The chunk-parallel path (:mod:`mcrnn.ops.deep.chunk`): ``o`` and, with ``output_cache``, the cache."""
    inputs, params, (eta, alpha, beta) = _cast(q, k, v, u, params, (eta, alpha, beta))
    out = None
    if not all_finite(*inputs, eta, alpha, beta):
        # the chunk products would carry a later token's NaN/Inf to earlier tokens of its chunk (0 * NaN);
        # the token-loop definition is causal by construction (slow, but only for such inputs)
        out, _ = naive_deep_mc(q, k, v, u, spec=spec, memory=memory, params=params, eta=eta, alpha=alpha,
                               beta=beta, chunk_size=chunk_size, mask=mask)  # fmt: skip
        if not output_cache:
            return out, None
    if spec.kind == "log":
        options = {"memory": memory, "params": params, "eta": eta, "alpha": alpha, "beta": beta,
                   "chunk_size": chunk_size, "aggregation": spec.aggregation, "init": spec.init,
                   "top_k": spec.top_k, "pooling": spec.pooling, "mask": mask}  # fmt: skip
        if out is None:
            with full_precision(q.device):
                out = chunk_deep_log_memory_caching(*inputs, **options).to(q.dtype)
        return out, deep_fenwick_prefill(spec, *inputs[1:3], **options) if output_cache else None
    lengths = spec.lengths(q.shape[1])
    with full_precision(q.device):
        result = chunk_deep_memory_caching(
            *inputs, lengths, memory=memory, params=params, eta=eta, alpha=alpha, beta=beta,
            chunk_size=chunk_size, aggregation=spec.aggregation, init=spec.init, top_k=spec.top_k,
            pooling=spec.pooling, mask=mask,
        )  # fmt: skip
    if out is None:
        out = result.output.to(q.dtype)
    if not output_cache:
        return out, None
    keys = inputs[1]
    ends = torch.tensor([0, *lengths]).cumsum(0).tolist()
    sums = [keys[:, a:b].sum(1) for a, b in zip(ends[:-1], ends[1:], strict=True)]
    cache = DeepMemoryCache(
        spec=spec,
        position=q.shape[1],
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
    return out, cache


def recurrent_deep_mc(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor | None = None,
    *,
    cache: DeepMemoryCache | DeepFenwickCache,
    params: Sequence[torch.Tensor],
    eta: torch.Tensor,
    alpha: torch.Tensor,
    beta: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, DeepMemoryCache | DeepFenwickCache]:
    """Continue ``cache`` token by token (:mod:`mcrnn.ops.deep.recurrent`); the spec, memory and inner
    chunk are the cache's. Returns ``o`` and a new cache (``cache`` itself is not modified)."""
    inputs, params, (eta, alpha, beta) = _cast(q, k, v, u, params, (eta, alpha, beta))
    cache = cache.to_dtype(inputs[0].dtype)  # float32 states for a bf16/fp16 cache too
    spec = cache.spec
    if isinstance(cache, DeepFenwickCache):
        out, cache = recurrent_deep_log(
            *inputs, cache, params=params, eta=eta, alpha=alpha, beta=beta, mask=mask
        )
        return out.to(q.dtype), cache
    cache = replace(
        cache, cached=list(cache.cached), context_sums=list(cache.context_sums),
        context_counts=list(cache.context_counts),
    )  # fmt: skip
    out, cache = recurrent_deep_memory_caching(
        *inputs, cache, params=params, eta=eta, alpha=alpha, beta=beta, aggregation=spec.aggregation,
        init=spec.init, top_k=spec.top_k, pooling=spec.pooling, mask=mask,
    )  # fmt: skip
    return out.to(q.dtype), cache
