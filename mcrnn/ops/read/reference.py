"""The read side of the token-loop definitions: MC over any matrix memory, one token at a time.

Slow on purpose and written to be read against DESIGN.md §3-§5. A family's definition supplies only its
write rule as a ``step(state, b, t, h, segment_start)`` that writes token ``t`` into a [Dk, Dv] state (batch
element ``b``, head ``h``; ``segment_start``: ``t`` is the first token the state runs over, so a
previous-token term sees nothing before it); these loops do the segmentation (constant/explicit segments
in :func:`segment_loop`, the Fenwick buckets in :func:`fenwick_loop`), the router and the aggregation
(:func:`aggregate`), recomputed token by token. Every fast path is tested against them in float64.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mcrnn.ops.read.fenwick import fenwick_buckets
from mcrnn.ops.spec import MCSpec

#: a write rule: ``step(state [Dk, Dv], b, t, h, segment_start) -> state`` after token ``t``
Step = Callable[[torch.Tensor, int, int, int, bool], torch.Tensor]


def token_loop(
    q: torch.Tensor, k: torch.Tensor, u: torch.Tensor, value_dim: int, step: Step, spec: MCSpec
) -> torch.Tensor:
    """MC over the matrix memory whose write rule is ``step``, token by token, for every segmentation of
    ``spec``: ``o`` [B, T, H, Dv] for ``q, k, u`` [B, T, H, Dk] (the router pools ``k``)."""
    if spec.kind == "log":
        return fenwick_loop(q, k, u, value_dim, step, spec)
    return segment_loop(q, k, u, value_dim, step, spec)


def segment_loop(
    q: torch.Tensor, k: torch.Tensor, u: torch.Tensor, value_dim: int, step: Step, spec: MCSpec
) -> torch.Tensor:
    """MC over any matrix memory with constant, explicit or no segments, token by token: ``o`` [B, T, H, Dv].

    Per batch element and head, at the first token of a segment the online state is cached with its
    context; ``independent`` restarts it from zero. ``step(state, b, t, h, segment_start)`` writes token
    ``t`` (the memory's update rule); the token then reads every cached state and the online one,
    aggregated with the weights of DESIGN.md §3.
    """
    batch, seq_len, heads, key_dim = q.shape
    lengths, init, pooling = spec.lengths(seq_len), spec.init, spec.pooling
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
                    contexts.append(pool(segment_keys, pooling))
                    segment_keys = []
                    if init == "independent":
                        state = q.new_zeros(key_dim, value_dim)
                segment_keys.append(k[b, t, h])
                state = step(state, b, t, h, t in starts)
                reads = [q[b, t, h] @ m for m in cached] + [q[b, t, h] @ state]
                logits = [u[b, t, h] @ c for c in contexts] + [u[b, t, h] @ pool(segment_keys, pooling)]
                out[b, t, h] = aggregate(reads, logits, spec.aggregation, spec.top_k)
    return out


def fenwick_loop(
    q: torch.Tensor,
    k: torch.Tensor,
    u: torch.Tensor,
    value_dim: int,
    step: Step,
    spec: MCSpec,
) -> torch.Tensor:
    """MC with the per-token Fenwick (log) segmentation of DESIGN.md §5 over any matrix memory:
    ``o`` [B, T, H, Dv]; ``step(state, b, t, h, segment_start)`` writes token ``t`` (the memory's update rule;
    ``segment_start``: ``t`` opens the bucket the state runs over, under ``independent``).

    The prefix of token ``t`` (length ``L = t + 1``) splits by the binary digits of ``L``, largest
    first: ``L = 37 -> [0, 32), [32, 36), [36, 37)``. The last bucket holds ``t`` and is the online
    memory; the others are cached. A bucket's state is the memory's state at its end (``checkpoint``) or
    the memory run over the bucket's own tokens from zero (``independent``); its router key pools its keys.
    """
    batch, seq_len, heads, key_dim = q.shape
    out = q.new_zeros(batch, seq_len, heads, value_dim)
    for b in range(batch):
        for h in range(heads):
            prefix = []  # the state after every token
            state = q.new_zeros(key_dim, value_dim)
            for t in range(seq_len):
                state = step(state, b, t, h, t == 0)
                prefix.append(state)
            for t in range(seq_len):
                reads, logits = [], []
                for start, end in fenwick_buckets(t + 1):
                    if spec.init == "checkpoint":
                        memory = prefix[end - 1]
                    else:
                        memory = q.new_zeros(key_dim, value_dim)
                        for i in range(start, end):
                            memory = step(memory, b, i, h, i == start)
                    reads.append(q[b, t, h] @ memory)
                    logits.append(u[b, t, h] @ pool(list(k[b, start:end, h]), spec.pooling))
                out[b, t, h] = aggregate(reads, logits, spec.aggregation, spec.top_k)
    return out


def pool(keys: list[torch.Tensor], pooling: str) -> torch.Tensor:
    """Router key of a segment or bucket: the mean or the sum of its keys [Dk]."""
    total = torch.stack(keys).sum(0)
    return total / len(keys) if pooling == "mean" else total


def aggregate(
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
