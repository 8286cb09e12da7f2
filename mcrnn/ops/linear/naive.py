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

from collections.abc import Callable, Sequence

import torch

from mcrnn.ops.inputs import to_compute_dtype
from mcrnn.ops.spec import MCSpec


def naive_linear_mc(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor | None = None,
    *,
    spec: MCSpec,
    memory: str = "linear",
    log_decay: torch.Tensor | None = None,
    prev_gate: torch.Tensor | None = None,
    cur_gate: torch.Tensor | None = None,
) -> tuple[torch.Tensor, None]:
    """The definition: MC output ``o`` [B, T, H, Dv] (in ``q``'s dtype) and no cache, for inputs as in
    :func:`mcrnn.ops.memory_caching` (not re-checked) and the segments of ``spec`` (not ``log``)."""
    gates = {"log_decay": log_decay, "prev_gate": prev_gate, "cur_gate": cur_gate}
    (q_c, k, v, u), gates, _ = to_compute_dtype(q, k, v, u, gates)
    out = _token_loop(
        q_c, k, v, u, spec.lengths(q.shape[1]), aggregation=spec.aggregation, init=spec.init,
        top_k=spec.top_k, pooling=spec.pooling, memory=memory, **gates,
    )  # fmt: skip
    return out.to(q.dtype), None


def _token_loop(
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
    """Reference MC output ``o`` [B, T, H, Dv] for inputs in the accumulation dtype."""

    def step(state: torch.Tensor, b: int, t: int, h: int, segment_start: bool) -> torch.Tensor:
        decay = torch.exp(log_decay[b, t, h]) if log_decay is not None else 1.0
        write = torch.outer(k[b, t, h], v[b, t, h])
        if memory == "swla":
            write = cur_gate[b, t, h] * write
            if t > 0 and not (init == "independent" and segment_start):
                write = write + prev_gate[b, t, h] * torch.outer(k[b, t - 1, h], v[b, t - 1, h])
        return decay * state + write

    return segment_loop(q, k, u, v.shape[-1], lengths, step, aggregation, init, top_k, pooling)


def segment_loop(
    q: torch.Tensor,
    k: torch.Tensor,
    u: torch.Tensor,
    value_dim: int,
    lengths: Sequence[int],
    step: Callable[[torch.Tensor, int, int, int, bool], torch.Tensor],
    aggregation: str,
    init: str,
    top_k: int | None,
    pooling: str,
) -> torch.Tensor:
    """MC over any matrix memory, token by token: ``o`` [B, T, H, Dv].

    Per batch element and head, at the first token of a segment the online state is cached with its
    context; ``independent`` restarts it from zero. ``step(state, b, t, h, segment_start)`` writes token
    ``t`` (the memory's update rule); the token then reads every cached state and the online one,
    aggregated with the weights of DESIGN.md §3.
    """
    batch, seq_len, heads, key_dim = q.shape
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
                out[b, t, h] = aggregate(reads, logits, aggregation, top_k)
    return out


def pool(keys: list[torch.Tensor], pooling: str) -> torch.Tensor:
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
