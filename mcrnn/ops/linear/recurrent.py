"""Recurrent (decoding) form of MC over matrix memories: one token at a time, with a growing cache.

The cache carries what the next token needs: the online state, the states cached at the end of every
finished segment with their router keys, the running key sum of the current segment and, for
``swla``, the previous token's key and value. A finished segment is pushed to the cache lazily, when
the first token of the next segment arrives, exactly as in the token-loop definition.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from mcrnn.ops.cache import MemoryCache
from mcrnn.ops.inputs import full_precision, to_compute_dtype
from mcrnn.ops.segments import router_gates
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


def token_write(
    k: torch.Tensor,
    v: torch.Tensor,
    cur_gate: torch.Tensor | None = None,
    prev_gate: torch.Tensor | None = None,
    prev_key: torch.Tensor | None = None,
    prev_value: torch.Tensor | None = None,
) -> torch.Tensor:
    """One token's write into a matrix memory, [B, H, Dk, Dv]: ``k v^T`` (``linear``; ``cur_gate`` None) or
    ``swla``'s ``l_t k_t v_t^T + b_t k_{t-1} v_{t-1}^T`` (``cur_gate`` = l_t, ``prev_gate`` = b_t [B, H]; the
    previous-token term only when ``prev_key``/``prev_value`` [B, H, D] are given)."""
    write = k.unsqueeze(-1) * v.unsqueeze(-2)
    if cur_gate is None:
        return write
    write = cur_gate[..., None, None] * write
    if prev_key is not None:
        write = write + prev_gate[..., None, None] * prev_key.unsqueeze(-1) * prev_value.unsqueeze(-2)
    return write


def recurrent_linear_mc(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor | None,
    cache: MatrixMemoryCache,
    *,
    log_decay: torch.Tensor | None = None,
    prev_gate: torch.Tensor | None = None,
    cur_gate: torch.Tensor | None = None,
) -> tuple[torch.Tensor, MatrixMemoryCache]:
    """Continue ``cache`` over [B, T, H, D] inputs token by token (the decoding path, not training;
    ``u`` None: ``u = q``).

    Segments open where ``cache.spec.starts_segment(position)``; the gates are [B, T, H] as in
    :func:`mcrnn.ops.memory_caching`. The step accumulates in float32 (float64 for float64 inputs or
    cache) as the parallel path does, whatever the inputs' dtype: the new cache holds states in that
    dtype. Returns ``o`` [B, T, H, Dv] in ``q``'s dtype and a new cache.
    """
    gates = {"log_decay": log_decay, "prev_gate": prev_gate, "cur_gate": cur_gate}
    (q_c, k, v, u), gates, dtype = to_compute_dtype(q, k, v, u, gates, cache.online)
    log_decay, prev_gate, cur_gate = gates["log_decay"], gates["prev_gate"], gates["cur_gate"]
    cache = cache.to_dtype(dtype)
    outputs = []
    with full_precision(q.device):
        for t in range(q.shape[1]):
            y, cache = recurrent_step(
                q_c[:, t],
                k[:, t],
                v[:, t],
                u[:, t],
                cache,
                decay=None if log_decay is None else log_decay[:, t].exp(),
                prev_gate=None if prev_gate is None else prev_gate[:, t],
                cur_gate=None if cur_gate is None else cur_gate[:, t],
            )
            outputs.append(y)
    return torch.stack(outputs, dim=1).to(q.dtype), cache


def recurrent_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor,
    cache: MatrixMemoryCache,
    *,
    decay: torch.Tensor | None,
    prev_gate: torch.Tensor | None,
    cur_gate: torch.Tensor | None,
) -> tuple[torch.Tensor, MatrixMemoryCache]:
    """One token of MC over a matrix memory.

    Args:
        q, k, u: [B, H, Dk]; v: [B, H, Dv]; decay: [B, H] (``a_t``) or None; prev_gate/cur_gate:
        [B, H] (``swla`` gates b_t, l_t).

    Returns: ``y`` [B, H, Dv] and the updated cache (a new object; the input cache is not modified).
    """
    spec = cache.spec
    online, cached, contexts = cache.online, cache.cached, cache.contexts
    key_sum, segment_tokens = cache.key_sum, cache.segment_tokens
    prev_key, prev_value = cache.prev_key, cache.prev_value
    if spec.starts_segment(cache.position):
        cached = torch.cat([cached, online.unsqueeze(1)], dim=1)
        contexts = torch.cat([contexts, cache.pooled_key().unsqueeze(1)], dim=1)
        key_sum, segment_tokens = torch.zeros_like(key_sum), 0
        if spec.init == "independent":
            online = torch.zeros_like(online)
            prev_key = prev_value = None
    swla = cache.memory == "swla"
    write = token_write(k, v, cur_gate if swla else None, prev_gate, prev_key, prev_value)
    if swla:
        prev_key, prev_value = k, v
    online = (online if decay is None else decay[..., None, None] * online) + write
    new_cache = replace(
        cache,
        position=cache.position + 1,
        online=online,
        cached=cached,
        contexts=contexts,
        key_sum=key_sum + k,
        segment_tokens=segment_tokens + 1,
        prev_key=prev_key,
        prev_value=prev_value,
    )
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
