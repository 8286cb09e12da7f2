"""The definition of Memory Caching over the ``kda`` memory (Kimi Delta Attention): a loop over tokens.

Per batch element and head (fla's ``naive_recurrent_kda`` without its ``q`` scale, which is the
caller's to apply)::

    M'_t = Diag(exp(g_t)) M_{t-1},   M_t = M'_t + b_t k_t (v_t - M'_t^T k_t)^T

read after the token is written, ``q_t^T M_t``. That write rule is all this module holds: the
segmentation, the router and the aggregation are the token loops of :mod:`mcrnn.ops.read.reference`. As
for the delta rule (DESIGN.md §6), the log segmentation is defined under ``init="checkpoint"`` only.
"""

from __future__ import annotations

import torch

from mcrnn.ops.inputs import to_compute_dtype
from mcrnn.ops.read.reference import token_loop
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

    def step(state: torch.Tensor, b: int, t: int, h: int, segment_start: bool) -> torch.Tensor:
        return kda_step(state, k[b, t, h], v[b, t, h], beta[b, t, h], log_decay[b, t, h])

    return token_loop(q_c, k, u, v.shape[-1], step, spec).to(q.dtype), None


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
