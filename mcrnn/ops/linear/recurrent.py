"""Recurrent (decoding) form of MC over matrix memories: one token at a time, with a growing cache.

The cache carries what the next token needs: the online state, the states cached at the end of every
finished segment with their router keys, the running key sum of the current segment and, for
``swla``, the previous token's key and value. A finished segment is pushed to the cache lazily, when
the first token of the next segment arrives, exactly as in the token-loop definition.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mcrnn.ops.segments import mixing_weights, router_gates


@dataclass
class MatrixMemoryCache:
    """Decoding state of MC over a matrix memory (heads-first layout).

    Attributes:
        online: [B, H, Dk, Dv] state of the current segment after the last token.
        cached: [B, H, N, Dk, Dv] states at the ends of the N finished segments.
        contexts: [B, N, H, Dk] pooled keys ``c_i`` of the finished segments.
        key_sum: [B, H, Dk] sum of the current segment's keys.
        segment_tokens: tokens seen in the current segment.
        position: tokens seen in total.
        prev_key, prev_value: [B, H, Dk], [B, H, Dv] last token (``swla`` only; None at a
            segment start under ``init="independent"``).
    """

    online: torch.Tensor
    cached: torch.Tensor
    contexts: torch.Tensor
    key_sum: torch.Tensor
    segment_tokens: int
    position: int
    prev_key: torch.Tensor | None = None
    prev_value: torch.Tensor | None = None

    @classmethod
    def empty(
        cls, batch: int, heads: int, key_dim: int, value_dim: int, dtype: torch.dtype, device: torch.device
    ) -> MatrixMemoryCache:
        """Cache before the first token."""
        zeros = torch.zeros
        return cls(
            online=zeros(batch, heads, key_dim, value_dim, dtype=dtype, device=device),
            cached=zeros(batch, heads, 0, key_dim, value_dim, dtype=dtype, device=device),
            contexts=zeros(batch, 0, heads, key_dim, dtype=dtype, device=device),
            key_sum=zeros(batch, heads, key_dim, dtype=dtype, device=device),
            segment_tokens=0,
            position=0,
        )

    @property
    def num_cached(self) -> int:
        """Number of cached (finished) segment states."""
        return self.cached.shape[2]

    def pooled_key(self, pooling: str) -> torch.Tensor:
        """Router key of the current segment so far: [B, H, Dk]."""
        return self.key_sum / self.segment_tokens if pooling == "mean" else self.key_sum


def recurrent_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor,
    cache: MatrixMemoryCache,
    *,
    starts_segment: bool,
    aggregation: str,
    init: str,
    top_k: int | None,
    pooling: str,
    memory: str,
    decay: torch.Tensor | None,
    prev_gate: torch.Tensor | None,
    cur_gate: torch.Tensor | None,
) -> tuple[torch.Tensor, MatrixMemoryCache]:
    """One token of MC over a matrix memory.

    Args:
        q, k, u: [B, H, Dk]; v: [B, H, Dv]; decay: [B, H] (``a_t``) or None; prev_gate/cur_gate:
        [B, H] (``swla`` gates b_t, l_t).
        starts_segment: the token opens a new segment (the current one is pushed to the cache).

    Returns: ``y`` [B, H, Dv] and the updated cache (a new object; the input cache is not modified).
    """
    online, cached, contexts = cache.online, cache.cached, cache.contexts
    key_sum, segment_tokens = cache.key_sum, cache.segment_tokens
    prev_key, prev_value = cache.prev_key, cache.prev_value
    if starts_segment and cache.position > 0:
        cached = torch.cat([cached, online.unsqueeze(2)], dim=2)
        contexts = torch.cat([contexts, cache.pooled_key(pooling).unsqueeze(1)], dim=1)
        key_sum, segment_tokens = torch.zeros_like(key_sum), 0
        if init == "independent":
            online = torch.zeros_like(online)
            prev_key = prev_value = None
    write = k.unsqueeze(-1) * v.unsqueeze(-2)
    if memory == "swla":
        write = cur_gate[..., None, None] * write
        if prev_key is not None:
            write = write + prev_gate[..., None, None] * prev_key.unsqueeze(-1) * prev_value.unsqueeze(-2)
        prev_key, prev_value = k, v
    online = (online if decay is None else decay[..., None, None] * online) + write
    new_cache = MatrixMemoryCache(
        online, cached, contexts, key_sum + k, segment_tokens + 1, cache.position + 1, prev_key, prev_value
    )
    n_cached = cached.shape[2]
    seg = torch.full((1,), n_cached, dtype=torch.long, device=q.device)
    cached_gates, online_gate, selected = router_gates(
        u.unsqueeze(1), contexts, new_cache.pooled_key(pooling).unsqueeze(1), seg, aggregation, top_k
    )
    y = online_gate[:, 0, :, None] * torch.einsum("bhk,bhkv->bhv", q, online)
    if n_cached:
        gates = cached_gates[:, 0]  # [B, H, N]
        if selected is not None:  # ssc: load only the selected states
            index = selected[:, 0]  # [B, H, k]
            gates = gates.gather(-1, index)
            cached = cached.gather(2, index[..., None, None].expand(-1, -1, -1, *cached.shape[-2:]))
        y = y + torch.einsum("bhn,bhk,bhnkv->bhv", gates, q, cached)
    return y, new_cache


@dataclass
class FenwickMemoryCache:
    """Decoding state of MC with the Fenwick (log) segmentation: a binary counter of buckets.

    After ``L`` tokens the buckets are the binary digits of ``L`` (largest first); the smallest is the
    online memory, the others are cached. Adding a token whose count ``L`` has ``j`` trailing zeros
    merges the buckets smaller than ``2^j`` (the online one included) with the token.

    Attributes:
        online: [B, H, Dk, Dv]; online_key_sum: [B, H, Dk]; online_size: tokens in the online bucket.
        cached: [B, H, n, Dk, Dv]; cached_key_sums: [B, n, H, Dk]; cached_sizes: bucket sizes.
        cached_log_decay: [B, H, n] cumulative log decay at each cached bucket's end.
        log_decay_total: [B, H] cumulative log decay after the last token; position: tokens seen.
    """

    online: torch.Tensor
    online_key_sum: torch.Tensor
    online_size: int
    cached: torch.Tensor
    cached_key_sums: torch.Tensor
    cached_sizes: list[int]
    cached_log_decay: torch.Tensor
    log_decay_total: torch.Tensor
    position: int

    @property
    def num_cached(self) -> int:
        return len(self.cached_sizes)


def fenwick_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor,
    cache: FenwickMemoryCache | None,
    *,
    aggregation: str,
    init: str,
    top_k: int | None,
    pooling: str,
    log_decay: torch.Tensor | None,
) -> tuple[torch.Tensor, FenwickMemoryCache]:
    """One token of Fenwick-segmented MC over a linear memory (q, k, u: [B, H, Dk]; v: [B, H, Dv];
    log_decay: [B, H] or None). Returns ``y`` [B, H, Dv] and a new cache."""
    write = k.unsqueeze(-1) * v.unsqueeze(-2)
    step_log_decay = torch.zeros_like(k[..., 0]) if log_decay is None else log_decay
    if cache is None:
        cache = FenwickMemoryCache(
            online=torch.zeros_like(write),
            online_key_sum=torch.zeros_like(k),
            online_size=0,
            cached=write.new_zeros(*write.shape[:2], 0, *write.shape[2:]),
            cached_key_sums=k.new_zeros(k.shape[0], 0, *k.shape[1:]),
            cached_sizes=[],
            cached_log_decay=k.new_zeros(*k.shape[:2], 0),
            log_decay_total=torch.zeros_like(step_log_decay),
            position=0,
        )
    length = cache.position + 1
    merged_size = length & -length  # the new online bucket's size, 2^j
    cached, key_sums = cache.cached, cache.cached_key_sums
    sizes, ends = list(cache.cached_sizes), cache.cached_log_decay
    online, key_sum = cache.online, cache.online_key_sum
    if cache.online_size and merged_size == 1:  # the old online bucket becomes cached
        cached = torch.cat([cached, online.unsqueeze(2)], dim=2)
        key_sums = torch.cat([key_sums, key_sum.unsqueeze(1)], dim=1)
        ends = torch.cat([ends, cache.log_decay_total.unsqueeze(-1)], dim=-1)
        sizes.append(cache.online_size)
        online = torch.zeros_like(online) if init == "independent" else online
        key_sum = torch.zeros_like(key_sum)
    elif merged_size > 1:  # merge the trailing cached buckets smaller than 2^j into the online one
        keep = sum(size >= merged_size for size in sizes)
        if init == "independent":
            decay_to_now = (cache.log_decay_total.unsqueeze(-1) - ends[..., keep:]).exp()
            online = online + (decay_to_now[..., None, None] * cached[:, :, keep:]).sum(2)
        key_sum = key_sum + key_sums[:, keep:].sum(1)
        cached, key_sums, ends, sizes = (
            cached[:, :, :keep],
            key_sums[:, :keep],
            ends[..., :keep],
            sizes[:keep],
        )
    online = step_log_decay.exp()[..., None, None] * online + write
    new_cache = FenwickMemoryCache(
        online,
        key_sum + k,
        merged_size,
        cached,
        key_sums,
        sizes,
        ends,
        cache.log_decay_total + step_log_decay,
        length,
    )
    n_cached = len(sizes)
    visible = torch.ones(q.shape[0], 1, q.shape[1], n_cached, dtype=torch.bool, device=q.device)

    def logits() -> tuple[torch.Tensor, torch.Tensor]:
        pooled = key_sums
        online_key = new_cache.online_key_sum
        if pooling == "mean":
            pooled = pooled / torch.tensor(sizes, dtype=q.dtype, device=q.device).view(1, -1, 1, 1)
            online_key = online_key / merged_size
        cached_logits = torch.einsum("bhd,bnhd->bhn", u, pooled).unsqueeze(1)
        return cached_logits, (u * online_key).sum(-1).unsqueeze(1)

    cached_w, online_w, _ = mixing_weights(visible, logits, aggregation, top_k, q.dtype)
    y = online_w[:, 0, :, None] * torch.einsum("bhk,bhkv->bhv", q, online)
    if n_cached:
        y = y + torch.einsum("bhn,bhk,bhnkv->bhv", cached_w[:, 0], q, cached)
    return y, new_cache
