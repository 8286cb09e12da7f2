"""The definition of Memory Caching over delta-rule memories: a plain loop over tokens.

Slow on purpose and written to be read against DESIGN.md §3-§6; the fast paths are tested against it
in float64. Per batch element and head, for token ``t`` in segment ``s``::

    M_t = a_t (I - b_t k_t k_t^T) M_{t-1} + b_t k_t v_t^T,   a_t = exp(log_decay_t) (1 for deltanet)

At the first token of a segment the online state is pushed to the cache with its context ``c_i``
(the pooled keys of the segment, as for ``linear``); ``init="independent"`` then restarts it from
zero, ``init="checkpoint"`` continues the recurrence unchanged. The online memory is read after the
token is written, ``q_t^T M_t``, and the reads are combined by
:func:`mcrnn.ops.read.reference.aggregate` (the token loops of :mod:`mcrnn.ops.read.reference`).

With the log segmentation (``init="checkpoint"`` only) token ``t`` reads the Fenwick buckets of its
prefix (DESIGN.md §5); a bucket's state is the delta-rule state at its end, its context pools its keys.
"""

from __future__ import annotations

import torch

from mcrnn.ops.inputs import to_compute_dtype
from mcrnn.ops.read.reference import token_loop
from mcrnn.ops.spec import MCSpec


def naive_delta_mc(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor | None = None,
    *,
    spec: MCSpec,
    memory: str = "gated_deltanet",
    log_decay: torch.Tensor | None = None,
    beta: torch.Tensor,
) -> tuple[torch.Tensor, None]:
    """The definition: MC output ``o`` [B, T, H, Dv] (in ``q``'s dtype) and no cache.

    Args:
        q, k, u: [B, T, H, Dk]; v: [B, T, H, Dv] (not re-checked; ``u`` None means ``u = q``).
        spec: the segments (constant, explicit, none, or log with ``init="checkpoint"``) and aggregation.
        memory: ``deltanet`` (``log_decay`` must be None) or ``gated_deltanet``.
        log_decay: [B, T, H] ``g_t <= 0`` or None; beta: [B, T, H] writing strength ``b_t`` in [0, 1].
    """
    del memory  # the two memories differ only in whether log_decay is given
    (q_c, k, v, u), gates, _ = to_compute_dtype(q, k, v, u, {"log_decay": log_decay, "beta": beta})
    log_decay, beta = gates["log_decay"], gates["beta"]

    def step(state: torch.Tensor, b: int, t: int, h: int, segment_start: bool) -> torch.Tensor:
        decay = torch.exp(log_decay[b, t, h]) if log_decay is not None else 1.0
        return _delta_step(state, k[b, t, h], v[b, t, h], beta[b, t, h], decay)

    return token_loop(q_c, k, u, v.shape[-1], step, spec).to(q.dtype), None


def _delta_step(
    state: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    strength: torch.Tensor,
    decay: torch.Tensor | float,
) -> torch.Tensor:
    """``a (I - b k k^T) M + b k v^T`` for one token (``decay = a``, a scalar tensor or 1.0)."""
    eye = torch.eye(key.shape[0], dtype=key.dtype, device=key.device)
    return decay * ((eye - strength * torch.outer(key, key)) @ state) + strength * torch.outer(key, value)
