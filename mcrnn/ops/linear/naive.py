"""The definition of Memory Caching over the matrix memories with additive writes: a plain loop over tokens.

Slow on purpose and written to be read against DESIGN.md §3-§6; every fast path is tested against
it in float64. Per batch element and head, token ``t`` writes

- ``linear``: ``M_t = a_t M_{t-1} + k_t v_t^T`` with ``a_t = exp(log_decay_t)`` (1 without decay);
- ``swla``: ``M_t = a_t M_{t-1} + b_t k_{t-1} v_{t-1}^T + l_t k_t v_t^T``.

That write rule is all this module holds: the segmentation (constant, explicit, none or log), the router
and the aggregation are the token loops of :mod:`mcrnn.ops.read.reference`. Under ``init="independent"``
a segment restarts from zero and the ``swla`` previous-token term sees no token before the segment's
first (each cached state summarises its segment only); ``init="checkpoint"`` continues the recurrence.
"""

from __future__ import annotations

import torch

from mcrnn.ops.inputs import to_compute_dtype
from mcrnn.ops.read.reference import token_loop
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
    :func:`mcrnn.ops.memory_caching` (not re-checked) and every segmentation of ``spec``."""
    gates = {"log_decay": log_decay, "prev_gate": prev_gate, "cur_gate": cur_gate}
    (q_c, k, v, u), gates, _ = to_compute_dtype(q, k, v, u, gates)
    log_decay, prev_gate, cur_gate = gates["log_decay"], gates["prev_gate"], gates["cur_gate"]

    def step(state: torch.Tensor, b: int, t: int, h: int, segment_start: bool) -> torch.Tensor:
        decay = torch.exp(log_decay[b, t, h]) if log_decay is not None else 1.0
        write = torch.outer(k[b, t, h], v[b, t, h])
        if memory == "swla":
            write = cur_gate[b, t, h] * write
            if t > 0 and not (spec.init == "independent" and segment_start):
                write = write + prev_gate[b, t, h] * torch.outer(k[b, t - 1, h], v[b, t - 1, h])
        return decay * state + write

    return token_loop(q_c, k, u, v.shape[-1], step, spec).to(q.dtype), None
