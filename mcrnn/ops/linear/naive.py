"""The definition of Memory Caching over matrix memories: a plain loop over tokens.

Slow on purpose and written to be read against DESIGN.md §3-§6; every fast path is tested against
it in float64. Per batch element and head, for token ``t`` in segment ``s``:

- ``linear``: ``M_t = a_t M_{t-1} + k_t v_t^T`` with ``a_t = exp(log_decay_t)`` (1 without decay);
- ``swla``: ``M_t = a_t M_{t-1} + b_t k_{t-1} v_{t-1}^T + l_t k_t v_t^T``.

At the first token of a segment the online state is pushed to the cache together with its
context ``c_i``; ``init="independent"`` then restarts it from zero, and the ``swla`` previous-token
term sees no token before the segment's first (each cached state summarises its segment only);
``init="checkpoint"`` continues the recurrence unchanged. The online memory is read after the
current token is written: ``M_t(q_t) = q_t^T M_t``. The aggregation is in
:func:`mcrnn.ops.segments.router_gates` form but recomputed here token by token.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mcrnn.ops.segments import fenwick_buckets


def naive_memory_caching(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor,
    lengths: Sequence[int],
    *,
    aggregation: str,
    init: str,
    top_k: int | None,
    pooling: str,
    memory: str,
    log_decay: torch.Tensor | None,
    prev_gate: torch.Tensor | None,
    cur_gate: torch.Tensor | None,
) -> torch.Tensor:
    """Reference MC output ``o`` [B, T, H, Dv] for validated inputs (see ``memory_caching``)."""
    batch, seq_len, heads, key_dim = q.shape
    value_dim = v.shape[-1]
    starts = set(torch.tensor([0, *lengths[:-1]]).cumsum(0).tolist())
    out = q.new_zeros(batch, seq_len, heads, value_dim)
    for b in range(batch):
        for h in range(heads):
            state = q.new_zeros(key_dim, value_dim)
            cached: list[torch.Tensor] = []
            contexts: list[torch.Tensor] = []
            segment_keys: list[torch.Tensor] = []
            for t in range(seq_len):
                if t in starts and t > 0:
                    cached.append(state)
                    contexts.append(_pool(segment_keys, pooling))
                    segment_keys = []
                    if init == "independent":
                        state = q.new_zeros(key_dim, value_dim)
                segment_keys.append(k[b, t, h])
                decay = torch.exp(log_decay[b, t, h]) if log_decay is not None else 1.0
                write = torch.outer(k[b, t, h], v[b, t, h])
                if memory == "swla":
                    write = cur_gate[b, t, h] * write
                    if t > 0 and not (init == "independent" and t in starts):
                        write = write + prev_gate[b, t, h] * torch.outer(k[b, t - 1, h], v[b, t - 1, h])
                state = decay * state + write
                reads = [q[b, t, h] @ m for m in cached] + [q[b, t, h] @ state]
                logits = [u[b, t, h] @ c for c in contexts] + [u[b, t, h] @ _pool(segment_keys, pooling)]
                out[b, t, h] = _aggregate(reads, logits, aggregation, top_k)
    return out


def _pool(keys: list[torch.Tensor], pooling: str) -> torch.Tensor:
    total = torch.stack(keys).sum(0)
    return total / len(keys) if pooling == "mean" else total


def _aggregate(
    reads: list[torch.Tensor], logits: list[torch.Tensor], aggregation: str, top_k: int | None
) -> torch.Tensor:
    """Combine reads (cached first, online last) with the weights of DESIGN.md §3."""
    if aggregation == "residual":
        return torch.stack(reads).sum(0)
    if aggregation == "average":
        return torch.stack(reads).mean(0)
    chosen = list(range(len(reads)))
    if aggregation == "ssc":
        cached_logits = torch.stack(logits[:-1]) if len(logits) > 1 else logits[0].new_zeros(0)
        keep = min(top_k, len(logits) - 1)
        top = cached_logits.nan_to_num(nan=float("-inf")).topk(keep).indices.tolist() if keep else []
        chosen = sorted(top) + [len(reads) - 1]
    weights = torch.softmax(torch.stack([logits[i] for i in chosen]), dim=0)
    return sum(w * reads[i] for w, i in zip(weights, chosen, strict=True))


def naive_log_memory_caching(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor,
    *,
    aggregation: str,
    init: str,
    top_k: int | None,
    pooling: str,
    log_decay: torch.Tensor | None,
) -> torch.Tensor:
    """Reference MC with the per-token Fenwick (log) segmentation of DESIGN.md §5 (``linear`` memory).

    The prefix of token ``t`` (length ``L = t + 1``) splits by the binary digits of ``L``, largest
    first: ``L = 37 -> [0, 32), [32, 36), [36, 37)``. The last bucket holds ``t`` and is the online
    memory; the others are cached. A bucket's state is the base state at its end (``checkpoint``) or
    the decayed sum of its own writes (``independent``); its router key pools its keys.
    """
    batch, seq_len, heads, _ = q.shape
    out = q.new_zeros(batch, seq_len, heads, v.shape[-1])
    for b in range(batch):
        for h in range(heads):
            decay = torch.ones(seq_len, dtype=q.dtype) if log_decay is None else log_decay[b, :, h].exp()
            writes = [torch.outer(k[b, t, h], v[b, t, h]) for t in range(seq_len)]
            prefix = []
            state = q.new_zeros(k.shape[-1], v.shape[-1])
            for t in range(seq_len):
                state = decay[t] * state + writes[t]
                prefix.append(state)
            for t in range(seq_len):
                reads, logits = [], []
                for start, end in fenwick_buckets(t + 1):
                    if init == "checkpoint":
                        memory = prefix[end - 1]
                    else:
                        memory = q.new_zeros(k.shape[-1], v.shape[-1])
                        for i in range(start, end):
                            memory = decay[i] * memory + writes[i]
                    reads.append(q[b, t, h] @ memory)
                    logits.append(u[b, t, h] @ _pool(list(k[b, start:end, h]), pooling))
                out[b, t, h] = _aggregate(reads, logits, aggregation, top_k)
    return out
