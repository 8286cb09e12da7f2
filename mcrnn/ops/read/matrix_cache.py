"""The decoding cache of MC over matrix memories with constant, explicit or no segments, and its step.

The cache carries what the next token needs: the online state, the states cached at the end of every
finished segment with their router keys, the running key sum of the current segment and, for
``swla``, the previous token's key and value. A finished segment is pushed to the cache lazily, when
the first token of the next segment arrives, exactly as in the token-loop definition.

Every matrix-memory family decodes through :func:`recurrent_step`: the family forms the token's write
(``k v^T``, ``swla``'s two terms, the delta rule's pseudo-value) and its decay, the step does the
segment bookkeeping, ``M_t = a_t M_{t-1} + write`` and the aggregated read. The decay ``a_t`` is [B, H]
(per head) or [B, H, Dk] (per key channel).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from mcrnn.ops.cache import MemoryCache
from mcrnn.ops.read.segments import router_gates, segment_contexts
from mcrnn.ops.spec import MCSpec


@dataclass
class MatrixMemoryCache(MemoryCache):
    """Decoding state of MC over a matrix memory (constant, explicit or no segments).

    Attributes (besides ``spec`` and ``position``, see :mod:`mcrnn.ops.cache`):
        memory: ``linear``, ``swla``, ``deltanet`` or ``gated_deltanet`` (the delta rule decodes through
            :mod:`mcrnn.ops.delta.recurrent`, which writes pseudo-values into this cache).
        online: [B, H, Dk, Dv] state of the current segment after the last token.
        cached: [B, N, H, Dk, Dv] states at the ends of the N finished segments.
        contexts: [B, N, H, Dk] pooled keys ``c_i`` of the finished segments.
        key_sum: [B, H, Dk] sum of the current segment's keys.
        segment_tokens: tokens seen in the current segment.
        prev_key, prev_value: [B, H, Dk], [B, H, Dv] last token (``swla`` only; None at a
            segment start under ``init="independent"``).
    """

    memory: str
    online: torch.Tensor
    cached: torch.Tensor
    contexts: torch.Tensor
    key_sum: torch.Tensor
    segment_tokens: int
    prev_key: torch.Tensor | None = None
    prev_value: torch.Tensor | None = None

    @classmethod
    def empty(
        cls,
        spec: MCSpec,
        memory: str,
        batch: int,
        heads: int,
        key_dim: int,
        value_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> MatrixMemoryCache:
        """Cache before the first token."""
        zeros = torch.zeros
        return cls(
            spec=spec,
            position=0,
            memory=memory,
            online=zeros(batch, heads, key_dim, value_dim, dtype=dtype, device=device),
            cached=zeros(batch, 0, heads, key_dim, value_dim, dtype=dtype, device=device),
            contexts=zeros(batch, 0, heads, key_dim, dtype=dtype, device=device),
            key_sum=zeros(batch, heads, key_dim, dtype=dtype, device=device),
            segment_tokens=0,
        )

    @property
    def num_cached(self) -> int:
        """Number of cached (finished) segment states."""
        return self.cached.shape[1]

    def shape_signature(self) -> tuple[int, int, int, int]:
        return tuple(self.online.shape)

    def pooled_key(self) -> torch.Tensor:
        """Router key of the current segment so far: [B, H, Dk]."""
        return self.key_sum / self.segment_tokens if self.spec.pooling == "mean" else self.key_sum


def decayed(state: torch.Tensor, decay: torch.Tensor | None) -> torch.Tensor:
    """``a_t M`` for a state [B, ..., H, Dk, Dv] and a decay [B, ..., H] (per head) or [B, ..., H, Dk] (per
    key channel, ``Diag(a_t) M``); None: ``M``."""
    if decay is None:
        return state
    return decay.unsqueeze(-1) * state if decay.dim() == state.dim() - 1 else decay[..., None, None] * state


def open_token(cache: MatrixMemoryCache) -> MatrixMemoryCache:
    """The cache as the next token finds it: at a segment start the online state is pushed with its
    context, and ``init="independent"`` restarts it from zero (no previous token either). A new object."""
    spec = cache.spec
    if not spec.starts_segment(cache.position):
        return cache
    restart = spec.init == "independent"
    return replace(
        cache,
        cached=torch.cat([cache.cached, cache.online.unsqueeze(1)], dim=1),
        contexts=torch.cat([cache.contexts, cache.pooled_key().unsqueeze(1)], dim=1),
        key_sum=torch.zeros_like(cache.key_sum),
        segment_tokens=0,
        online=torch.zeros_like(cache.online) if restart else cache.online,
        prev_key=None if restart else cache.prev_key,
        prev_value=None if restart else cache.prev_value,
    )


def recurrent_step(
    q: torch.Tensor,
    k: torch.Tensor,
    u: torch.Tensor,
    *,
    cache: MatrixMemoryCache,
    write: torch.Tensor,
    decay: torch.Tensor | None,
) -> tuple[torch.Tensor, MatrixMemoryCache]:
    """One token of MC over a matrix memory, for a ``cache`` from :func:`open_token`:
    ``M_t = a_t M_{t-1} + write``, then the aggregated read of the online and cached states.

    Args:
        q, k, u: [B, H, Dk]; write: [B, H, Dk, Dv] the token's write (the family's rule); decay: [B, H] or
        [B, H, Dk] (``a_t``) or None.

    Returns: ``y`` [B, H, Dv] and the updated cache (a new object; the input cache is not modified).
    """
    spec = cache.spec
    online = decayed(cache.online, decay) + write
    new_cache = replace(
        cache,
        position=cache.position + 1,
        online=online,
        key_sum=cache.key_sum + k,
        segment_tokens=cache.segment_tokens + 1,
    )
    cached, contexts = cache.cached, cache.contexts
    n_cached = cached.shape[1]
    seg = torch.full((1,), n_cached, dtype=torch.long, device=q.device)
    cached_gates, online_gate, selected = router_gates(
        u.unsqueeze(1), contexts, new_cache.pooled_key().unsqueeze(1), seg, spec.aggregation, spec.top_k
    )
    y = online_gate[:, 0, :, None] * torch.einsum("bhk,bhkv->bhv", q, online)
    if n_cached:
        gates = cached_gates[:, 0]  # [B, H, N]
        if selected is not None:  # ssc: load only the selected states
            index = selected[:, 0].transpose(1, 2)  # [B, k, H]
            gates = gates.gather(-1, selected[:, 0])
            cached = cached.gather(1, index[..., None, None].expand(-1, -1, -1, *cached.shape[-2:]))
        y = y + torch.einsum("bhn,bhk,bnhkv->bhv", gates, q, cached)
    return y, new_cache


def prefill_cache(
    spec: MCSpec,
    memory: str,
    states: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lengths: Sequence[int],
) -> MatrixMemoryCache:
    """Decoding cache of any matrix memory after a parallel pass: ``states`` [B, N, H, Dk, Dv] at segment
    ends, ``k``/``v`` [B, T, H, D] (``v`` is kept only for ``swla``). The last segment stays online
    (pushed to the cache lazily, by the next token)."""
    dtype = states.dtype
    k, v = k.to(dtype), v.to(dtype)
    contexts, _ = segment_contexts(k, lengths, spec.pooling)
    last_start = sum(lengths[:-1])
    return MatrixMemoryCache(
        spec=spec,
        position=sum(lengths),
        memory=memory,
        online=states[:, -1],
        cached=states[:, :-1],
        contexts=contexts[:, :-1],
        key_sum=k[:, last_start:].sum(1),
        segment_tokens=lengths[-1],
        prev_key=k[:, -1] if memory == "swla" else None,
        prev_value=v[:, -1] if memory == "swla" else None,
    )
