"""Token-by-token decoding of deep-memory MC with a recurrent cache.

The chunked rule takes every gradient of a chunk at the chunk-start weights ``theta_0``; the decode
step keeps ``theta_0`` until the chunk fills and folds each new token in at once
(``S_t = b_t S_{t-1} - eta_t grad l_t(theta_0)``, ``theta_t = a_t theta_{t-1} + S_t``), which is exactly
what buffering the chunk's tokens and replaying them would give, and reads ``theta_t`` like the
parallel path, so decoding equals the parallel forward. Segment and chunk boundaries are counted
from the first token of the stream. A masked token leaves the weights and the momentum unchanged
(its key still enters the segment's key sum, as in the parallel path).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from mcrnn.ops.cache import MemoryCache
from mcrnn.ops.deep import network
from mcrnn.ops.deep.log_recurrent import DeepFenwickCache, recurrent_deep_log
from mcrnn.ops.deep.naive import cast_inputs
from mcrnn.ops.deep.rule import Rates, write_step
from mcrnn.ops.read.segments import router_gates


@dataclass
class DeepMemoryCache(MemoryCache):
    """Recurrent state of one deep-memory MC stream (batch-first, per-layer ``[B, H, d_out, d_in]``).

    Besides ``spec`` and ``position`` (see :mod:`mcrnn.ops.cache`):

    ``weights``/``momentum`` are the online state after the last token (momentum ``None`` for
    ``dla``), ``chunk_start`` the weights at the start of the current inner chunk, ``cached`` the
    weights at the ends of finished segments with their key sums and lengths (``context_sums``
    ``[B, H, Dk]``, ``context_counts``), ``key_sum``/``key_count`` the keys of the current segment,
    ``position`` the tokens seen and ``segment_start`` the position where the current segment began.
    """

    memory: str
    chunk_size: int
    weights: list[torch.Tensor]
    momentum: list[torch.Tensor] | None
    chunk_start: list[torch.Tensor]
    key_sum: torch.Tensor
    key_count: int
    segment_start: int
    cached: list[list[torch.Tensor]] = field(default_factory=list)
    context_sums: list[torch.Tensor] = field(default_factory=list)
    context_counts: list[int] = field(default_factory=list)

    def shape_signature(self) -> tuple[int, int, int, int]:
        first, last = self.weights[0], self.weights[-1]
        return (first.shape[0], first.shape[1], first.shape[-1], last.shape[-2])


def recurrent_deep_memory_caching(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor,
    *,
    cache: DeepMemoryCache,
    params: Sequence[torch.Tensor],
    rates: Rates,
) -> tuple[torch.Tensor, DeepMemoryCache]:
    """Continue ``cache`` over ``T`` new tokens ``[B, T, H, D]`` one step at a time, segments opening where
    ``cache.spec.starts_segment(position)``; returns ``o`` and ``cache`` (a working copy the caller made:
    modified in place). A masked token (``rates.mask``) is an identity step."""
    outputs = []
    for t in range(q.shape[1]):
        if cache.spec.starts_segment(cache.position):
            _close_segment(cache, params)
        if (cache.position - cache.segment_start) % cache.chunk_size == 0:
            cache.chunk_start = cache.weights
        cache.weights, cache.momentum = write_step(
            cache.memory, cache.weights, cache.momentum, cache.chunk_start, k[:, t], v[:, t], rates.at(t)
        )
        cache.key_sum = cache.key_sum + k[:, t]
        cache.key_count += 1
        outputs.append(_read(cache, q[:, t], u[:, t]))
        cache.position += 1
    return torch.stack(outputs, dim=1), cache


def _close_segment(cache: DeepMemoryCache, params: Sequence[torch.Tensor]) -> None:
    cache.cached.append(cache.weights)
    cache.context_sums.append(cache.key_sum)
    cache.context_counts.append(cache.key_count)
    cache.key_sum = torch.zeros_like(cache.key_sum)
    cache.key_count = 0
    cache.segment_start = cache.position
    if cache.spec.init == "independent":
        batch = cache.key_sum.shape[0]
        cache.weights = [w.unsqueeze(0).expand(batch, *w.shape) for w in params]
        if cache.momentum is not None:
            cache.momentum = [torch.zeros_like(w) for w in cache.weights]


def _read(cache: DeepMemoryCache, q: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Aggregated read of the online and cached memories for one token; ``q, u`` [B, H, Dk]."""
    aggregation, top_k, pooling = cache.spec.aggregation, cache.spec.top_k, cache.spec.pooling
    n_cached = len(cache.cached)
    if n_cached:
        sums = torch.stack(cache.context_sums, dim=1)  # [B, N_c, H, Dk]
        counts = torch.tensor(cache.context_counts, dtype=sums.dtype, device=sums.device)
        contexts = sums / counts.view(1, -1, 1, 1) if pooling == "mean" else sums
    else:
        contexts = u.new_zeros(u.shape[0], 0, *u.shape[1:])
    online_context = cache.key_sum / cache.key_count if pooling == "mean" else cache.key_sum
    seg = torch.tensor([n_cached], device=q.device)
    gates, online_gate, _ = router_gates(
        u.unsqueeze(1), contexts, online_context.unsqueeze(1), seg, aggregation, top_k
    )
    gates, online_gate = gates[:, 0], online_gate[:, 0, :, None, None]  # [B, H, N_c], [B, H, 1, 1]
    query = q.unsqueeze(-2)
    if aggregation == "soup":
        mixed = [online_gate * w for w in cache.weights]
        for i, state in enumerate(cache.cached):
            mixed = [m + gates[:, :, i, None, None] * w for m, w in zip(mixed, state, strict=True)]
        return network.forward(mixed, query).squeeze(-2)
    out = online_gate * network.forward(cache.weights, query)
    for i, state in enumerate(cache.cached):
        out = out + gates[:, :, i, None, None] * network.forward(state, query)
    return out.squeeze(-2)


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
    momentum: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, DeepMemoryCache | DeepFenwickCache]:
    """Continue ``cache`` token by token, every segmentation (a :class:`DeepFenwickCache` for ``log``); the
    spec, memory and inner chunk are the cache's, the rates as in :func:`~mcrnn.ops.deep.naive_deep_mc`.
    Returns ``o`` and a new cache (``cache`` itself is not modified)."""
    inputs, params, rates = cast_inputs(q, k, v, u, params, Rates(eta, alpha, momentum, mask))
    cache = cache.to_dtype(inputs[0].dtype)  # float32 states for a bf16/fp16 cache too
    if isinstance(cache, DeepFenwickCache):
        out, cache = recurrent_deep_log(*inputs, cache=cache, params=params, rates=rates)
        return out.to(q.dtype), cache
    lists = {name: list(getattr(cache, name)) for name in ("cached", "context_sums", "context_counts")}
    working = replace(cache, **lists)  # the caller's cache stays as it was
    out, cache = recurrent_deep_memory_caching(*inputs, cache=working, params=params, rates=rates)
    return out.to(q.dtype), cache
