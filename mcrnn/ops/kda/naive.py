"""The definition of Memory Caching over the ``kda`` memory (Kimi Delta Attention): a loop over tokens.

Per batch element and head (fla's ``naive_recurrent_kda`` without its ``q`` scale, which is the
caller's to apply)::

    M'_t = Diag(exp(g_t)) M_{t-1},   M_t = M'_t + b_t k_t (v_t - M'_t^T k_t)^T

read after the token is written, ``q_t^T M_t``. Segments, contexts, inits and the aggregation are
those of the matrix memories' definition (:func:`mcrnn.ops.linear.naive.segment_loop`,
:func:`mcrnn.ops.log.naive.fenwick_loop`); only the step below is KDA's. As for the delta rule
(DESIGN.md §6), the log segmentation is defined under ``init="checkpoint"`` only.
"""

from __future__ import annotations

import torch

from mcrnn.ops.inputs import to_compute_dtype
from mcrnn.ops.linear.naive import segment_loop
from mcrnn.ops.log.naive import fenwick_loop
from mcrnn.ops.spec import MCSpec


def naive_kda_mc(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor | None = None,
    *,
    spec: MCSpec,
    log_decay: torch.Tensor,
    beta: torch.Tensor,
) -> tuple[torch.Tensor, None]:
    """The definition: MC output ``o`` [B, T, H, Dv] (in ``q``'s dtype) and no cache.

    Args:
        q, k, u: [B, T, H, Dk]; v: [B, T, H, Dv] (not re-checked; ``u`` None means ``u = q``).
        spec: the segments (constant, explicit, none, or log with ``init="checkpoint"``) and aggregation.
        log_decay: [B, T, H, Dk] ``g_t`` (finite, <= 0); beta: [B, T, H] writing strength ``b_t`` in [0, 1].
    """
    (q_c, k, v, u), gates, _ = to_compute_dtype(q, k, v, u, {"log_decay": log_decay, "beta": beta})
    log_decay, beta = gates["log_decay"], gates["beta"]

    def step(state: torch.Tensor, b: int, t: int, h: int, segment_start: bool = False) -> torch.Tensor:
        return kda_step(state, k[b, t, h], v[b, t, h], beta[b, t, h], log_decay[b, t, h])

    if spec.kind == "log":
        out = fenwick_loop(q_c, k, u, v.shape[-1], step, spec)
    else:
        lengths = spec.lengths(q.shape[1])
        options = (spec.aggregation, spec.init, spec.top_k, spec.pooling)
        out = segment_loop(q_c, k, u, v.shape[-1], lengths, step, *options)
    return out.to(q.dtype), None


def kda_step(
    state: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    strength: torch.Tensor,
    log_decay: torch.Tensor,
) -> torch.Tensor:
    """``M' + b k (v - M'^T k)^T`` with ``M' = Diag(exp(g)) M``, one token: state [Dk, Dv], key and
    ``log_decay`` [Dk], value [Dv], strength ``b`` a scalar tensor."""
    decayed = log_decay.exp().unsqueeze(-1) * state
    return decayed + strength * torch.outer(key, value - decayed.T @ key)
