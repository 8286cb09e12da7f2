"""Decoding with the Fenwick (log) segmentation: a binary counter of buckets (DESIGN.md §5).

After ``L`` tokens the buckets are the binary digits of ``L`` (largest first); the smallest is the
online memory, the others are cached. Adding a token whose count ``L`` has ``j`` trailing zeros merges
the buckets smaller than ``2^j`` (the online one included) with the token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mcrnn.ops.cache import MemoryCache
from mcrnn.ops.read.fenwick import fenwick_buckets
from mcrnn.ops.read.matrix_cache import MatrixMemoryCache, decayed, recurrent_step
from mcrnn.ops.read.segments import mixing_weights
from mcrnn.ops.spec import MCSpec


@dataclass
class FenwickMemoryCache(MemoryCache):
    """Decoding state of MC over a ``linear`` (or delta-rule) memory with the log segmentation.

    Attributes (besides ``spec`` and ``position``, see :mod:`mcrnn.ops.cache`):
        online: [B, H, Dk, Dv]; online_key_sum: [B, H, Dk]; online_size: tokens in the online bucket.
        cached: [B, n, H, Dk, Dv]; cached_key_sums: [B, n, H, Dk]; cached_sizes: bucket sizes.
        cached_log_decay: [B, n, H] cumulative log decay at each cached bucket's end ([B, n, H, Dk] for a
            per-key-channel decay).
        log_decay_total: [B, H] ([B, H, Dk]) cumulative log decay after the last token.
        memory: ``linear``, ``swla`` (buckets hold both write streams), or a delta-rule memory whose
            pseudo-values the buckets hold (:mod:`mcrnn.ops.delta`).
        prev_key, prev_value: [B, H, Dk], [B, H, Dv] the last token (``swla`` only, else None).
    """

    online: torch.Tensor
    online_key_sum: torch.Tensor
    online_size: int
    cached: torch.Tensor
    cached_key_sums: torch.Tensor
    cached_sizes: list[int]
    cached_log_decay: torch.Tensor
    log_decay_total: torch.Tensor
    memory: str = "linear"
    prev_key: torch.Tensor | None = None
    prev_value: torch.Tensor | None = None

    @classmethod
    def empty(
        cls,
        spec: MCSpec,
        batch: int,
        heads: int,
        key_dim: int,
        value_dim: int,
        dtype: torch.dtype,
        device: torch.device,
        channel_decay: bool = False,
    ) -> FenwickMemoryCache:
        """Cache before the first token (``channel_decay``: the decay is per key channel, [B, H, Dk])."""
        zeros = torch.zeros
        decay_dims = (heads, key_dim) if channel_decay else (heads,)
        return cls(
            spec=spec,
            position=0,
            online=zeros(batch, heads, key_dim, value_dim, dtype=dtype, device=device),
            online_key_sum=zeros(batch, heads, key_dim, dtype=dtype, device=device),
            online_size=0,
            cached=zeros(batch, 0, heads, key_dim, value_dim, dtype=dtype, device=device),
            cached_key_sums=zeros(batch, 0, heads, key_dim, dtype=dtype, device=device),
            cached_sizes=[],
            cached_log_decay=zeros(batch, 0, *decay_dims, dtype=dtype, device=device),
            log_decay_total=zeros(batch, *decay_dims, dtype=dtype, device=device),
        )

    @property
    def num_cached(self) -> int:
        return len(self.cached_sizes)

    def shape_signature(self) -> tuple[int, int, int, int]:
        return tuple(self.online.shape)


def fenwick_step(
    q: torch.Tensor,
    k: torch.Tensor,
    u: torch.Tensor,
    *,
    cache: FenwickMemoryCache,
    write: torch.Tensor,
    log_decay: torch.Tensor | None,
) -> tuple[torch.Tensor, FenwickMemoryCache]:
    """One token of Fenwick-segmented MC over a matrix memory: the binary-counter merge,
    ``M_t = a_t M + write`` and the aggregated read (q, k, u: [B, H, Dk]; ``write`` [B, H, Dk, Dv] the
    token's write, the family's rule; log_decay: [B, H] or None; the router pools ``k``). Returns ``y``
    [B, H, Dv] and a new cache (the one passed in is not modified)."""
    spec = cache.spec
    step_log_decay = torch.zeros_like(k[..., 0]) if log_decay is None else log_decay
    length = cache.position + 1
    merged_size = length & -length  # the new online bucket's size, 2^j
    cached, key_sums = cache.cached, cache.cached_key_sums
    sizes, ends = list(cache.cached_sizes), cache.cached_log_decay
    online, key_sum = cache.online, cache.online_key_sum
    if cache.online_size and merged_size == 1:  # the old online bucket becomes cached
        cached = torch.cat([cached, online.unsqueeze(1)], dim=1)
        key_sums = torch.cat([key_sums, key_sum.unsqueeze(1)], dim=1)
        ends = torch.cat([ends, cache.log_decay_total.unsqueeze(1)], dim=1)
        sizes.append(cache.online_size)
        online = torch.zeros_like(online) if spec.init == "independent" else online
        key_sum = torch.zeros_like(key_sum)
    elif merged_size > 1:  # merge the trailing cached buckets smaller than 2^j into the online one
        keep = sum(size >= merged_size for size in sizes)
        if spec.init == "independent":
            decay_to_now = (cache.log_decay_total.unsqueeze(1) - ends[:, keep:]).exp()
            online = online + decayed(cached[:, keep:], decay_to_now).sum(1)
        key_sum = key_sum + key_sums[:, keep:].sum(1)
        cached, key_sums, ends, sizes = cached[:, :keep], key_sums[:, :keep], ends[:, :keep], sizes[:keep]
    online = decayed(online, step_log_decay.exp()) + write
    new_cache = FenwickMemoryCache(
        spec=spec,
        position=length,
        online=online,
        online_key_sum=key_sum + k,
        online_size=merged_size,
        cached=cached,
        cached_key_sums=key_sums,
        cached_sizes=sizes,
        cached_log_decay=ends,
        log_decay_total=cache.log_decay_total + step_log_decay,
        memory=cache.memory,
        prev_key=cache.prev_key,
        prev_value=cache.prev_value,
    )
    n_cached = len(sizes)
    visible = torch.ones(q.shape[0], 1, q.shape[1], n_cached, dtype=torch.bool, device=q.device)

    def logits() -> tuple[torch.Tensor, torch.Tensor]:
        pooled = key_sums
        online_key = new_cache.online_key_sum
        if spec.pooling == "mean":
            pooled = pooled / torch.tensor(sizes, dtype=q.dtype, device=q.device).view(1, -1, 1, 1)
            online_key = online_key / merged_size
        cached_logits = torch.einsum("bhd,bnhd->bhn", u, pooled).unsqueeze(1)
        return cached_logits, (u * online_key).sum(-1).unsqueeze(1)

    cached_w, online_w, _ = mixing_weights(visible, logits, spec.aggregation, spec.top_k, q.dtype)
    y = online_w[:, 0, :, None] * torch.einsum("bhk,bhkv->bhv", q, online)
    if n_cached:
        y = y + torch.einsum("bhn,bhk,bnhkv->bhv", cached_w[:, 0], q, cached)
    return y, new_cache


def fenwick_prefill_cache(
    spec: MCSpec,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor | None,
    streams: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> FenwickMemoryCache:
    """The decoding cache after the [B, T, H, D] tokens, built from whole-bucket sums.

    Bucket ``[s, e)`` sums its writes decayed to its end, ``W = sum_i exp(G_{e-1} - G_i) k_i v_i^T``
    (``G`` the cumulative log decay); under ``checkpoint`` the state chains across buckets,
    ``P_b = exp(G_{e-1} - G_{s-1}) P_{b-1} + W_b``. ``log_decay``: [B, T, H] (per head), [B, T, H, Dk] (per
    key channel: ``exp(G)`` scales the keys channel by channel) or None. ``streams``: the (key, value) write
    streams whose writes add up (None: ``[(k, v)]``); the router key sums are always of ``k``.
    """
    streams = [(k, v)] if streams is None else streams
    batch, seq_len, heads, key_dim = k.shape
    channel_decay = log_decay is not None and log_decay.dim() == 4
    cache = FenwickMemoryCache.empty(
        spec, batch, heads, key_dim, v.shape[-1], k.dtype, k.device, channel_decay=channel_decay
    )
    cum = torch.zeros(batch, seq_len, heads, dtype=k.dtype, device=k.device)
    if log_decay is not None:
        cum = log_decay.cumsum(1)
    states, key_sums, end_decays = [], [], []
    previous = None
    buckets = fenwick_buckets(seq_len)
    for start, end in buckets:
        weight = (cum[:, end - 1 : end] - cum[:, start:end]).exp()  # [B, n, H] or [B, n, H, Dk]
        weight = weight if channel_decay else weight.unsqueeze(-1)
        state = sum(
            torch.einsum("bnhk,bnhv->bhkv", keys[:, start:end] * weight, values[:, start:end])
            for keys, values in streams
        )
        if spec.init == "checkpoint" and previous is not None:
            state = state + decayed(previous, (cum[:, end - 1] - cum[:, start - 1]).exp())
        previous = state
        states.append(state)
        key_sums.append(k[:, start:end].sum(1))
        end_decays.append(cum[:, end - 1])
    sizes = [end - start for start, end in buckets]
    stacked = {}
    if len(states) > 1:
        stacked = {
            "cached": torch.stack(states[:-1], dim=1),
            "cached_key_sums": torch.stack(key_sums[:-1], dim=1),
            "cached_log_decay": torch.stack(end_decays[:-1], dim=1),
        }
    return FenwickMemoryCache(
        spec=spec,
        position=seq_len,
        online=states[-1],
        online_key_sum=key_sums[-1],
        online_size=sizes[-1],
        cached=stacked.get("cached", cache.cached),
        cached_key_sums=stacked.get("cached_key_sums", cache.cached_key_sums),
        cached_sizes=sizes[:-1],
        cached_log_decay=stacked.get("cached_log_decay", cache.cached_log_decay),
        log_decay_total=cum[:, -1],
    )


def matrix_token_step(
    q: torch.Tensor,
    k: torch.Tensor,
    u: torch.Tensor,
    *,
    cache: MatrixMemoryCache | FenwickMemoryCache,
    write: torch.Tensor,
    log_decay: torch.Tensor | None,
) -> tuple[torch.Tensor, MatrixMemoryCache | FenwickMemoryCache]:
    """One decoded token of any matrix write rule, every segmentation: :func:`fenwick_step` for a
    :class:`FenwickMemoryCache` (log), else :func:`~mcrnn.ops.read.matrix_cache.recurrent_step` with the
    decay ``exp(log_decay)`` (a :class:`MatrixMemoryCache` already opened for this token by
    :func:`~mcrnn.ops.read.matrix_cache.open_token`). q, k, u: [B, H, Dk]; write: [B, H, Dk, Dv];
    log_decay: [B, H] or [B, H, Dk] or None. Returns ``y`` [B, H, Dv] and the new cache."""
    if isinstance(cache, FenwickMemoryCache):
        return fenwick_step(q, k, u, cache=cache, write=write, log_decay=log_decay)
    decay = None if log_decay is None else log_decay.exp()
    return recurrent_step(q, k, u, cache=cache, write=write, decay=decay)
