"""The definition of MC with the per-token Fenwick (log) segmentation: a plain loop over tokens.

Slow on purpose; the parallel path (:mod:`.chunk`) and decoding (:mod:`.recurrent`) are tested
against it in float64. The aggregation helpers are those of the constant-segment definition.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mcrnn.ops.inputs import to_compute_dtype
from mcrnn.ops.linear.naive import aggregate, pool
from mcrnn.ops.log.buckets import fenwick_buckets
from mcrnn.ops.spec import MCSpec


def naive_log_mc(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor | None = None,
    *,
    spec: MCSpec,
    log_decay: torch.Tensor | None = None,
    prev_gate: torch.Tensor | None = None,
    cur_gate: torch.Tensor | None = None,
) -> tuple[torch.Tensor, None]:
    """The definition of MC with the log segmentation (``linear``; ``swla`` with its gates ``prev_gate``,
    ``cur_gate`` [B, T, H]): ``o`` [B, T, H, Dv] (``q``'s dtype), no cache."""
    gates = {"log_decay": log_decay, "prev_gate": prev_gate, "cur_gate": cur_gate}
    inputs, gates, _ = to_compute_dtype(q, k, v, u, gates)
    return _token_loop(*inputs, spec=spec, **gates).to(q.dtype), None


def _token_loop(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor,
    *,
    spec: MCSpec,
    log_decay: torch.Tensor | None,
    prev_gate: torch.Tensor | None,
    cur_gate: torch.Tensor | None,
) -> torch.Tensor:
    """Reference MC with the log segmentation over the ``linear`` memory, ``M_t = a_t M_{t-1} + k_t v_t^T``,
    or ``swla``, ``M_t = a_t M_{t-1} + b_t k_{t-1} v_{t-1}^T + l_t k_t v_t^T`` (``init="checkpoint"``:
    every bucket state is the stream's state at its end): ``o`` [B, T, H, Dv]."""

    def step(state: torch.Tensor, b: int, t: int, h: int) -> torch.Tensor:
        decay = torch.exp(log_decay[b, t, h]) if log_decay is not None else 1.0
        write = torch.outer(k[b, t, h], v[b, t, h])
        if cur_gate is not None:
            write = cur_gate[b, t, h] * write
            if t > 0:
                write = write + prev_gate[b, t, h] * torch.outer(k[b, t - 1, h], v[b, t - 1, h])
        return decay * state + write

    return fenwick_loop(q, k, u, v.shape[-1], step, spec)


def fenwick_loop(
    q: torch.Tensor,
    k: torch.Tensor,
    u: torch.Tensor,
    value_dim: int,
    step: Callable[[torch.Tensor, int, int, int], torch.Tensor],
    spec: MCSpec,
) -> torch.Tensor:
    """MC with the per-token Fenwick (log) segmentation of DESIGN.md §5 over any matrix memory:
    ``o`` [B, T, H, Dv]; ``step(state, b, t, h)`` writes token ``t`` (the memory's update rule).

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
                state = step(state, b, t, h)
                prefix.append(state)
            for t in range(seq_len):
                reads, logits = [], []
                for start, end in fenwick_buckets(t + 1):
                    if spec.init == "checkpoint":
                        memory = prefix[end - 1]
                    else:
                        memory = q.new_zeros(key_dim, value_dim)
                        for i in range(start, end):
                            memory = step(memory, b, i, h)
                    reads.append(q[b, t, h] @ memory)
                    logits.append(u[b, t, h] @ pool(list(k[b, start:end, h]), spec.pooling))
                out[b, t, h] = aggregate(reads, logits, spec.aggregation, spec.top_k)
    return out
