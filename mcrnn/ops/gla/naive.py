"""The definition of Memory Caching over the ``gla`` memory: a plain loop over tokens.

Per batch element and head, with a decay per key channel (fla's gated linear attention)::

    M_t = Diag(exp(g_t)) M_{t-1} + k_t v_t^T,   g_t in R^Dk finite, <= 0

read after the token is written, ``q_t^T M_t`` (no ``1/sqrt(Dk)`` scale: fla's default is the caller's
to apply to ``q``). That write rule is all this module holds: the segmentation (constant, explicit, none
or log, both inits: a GLA state is linear in its writes), the router and the aggregation are the token
loops of :mod:`mcrnn.ops.read.reference`.
"""

from __future__ import annotations

import torch

from mcrnn.ops.inputs import to_compute_dtype
from mcrnn.ops.read.reference import token_loop
from mcrnn.ops.spec import MCSpec


def naive_gla_mc(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor | None = None,
    *,
    spec: MCSpec,
    log_decay: torch.Tensor,
) -> tuple[torch.Tensor, None]:
    """The definition: MC output ``o`` [B, T, H, Dv] (in ``q``'s dtype) and no cache.

    Args:
        q, k, u: [B, T, H, Dk]; v: [B, T, H, Dv] (not re-checked; ``u`` None means ``u = q``).
        spec: any segmentation (constant, explicit, none, log) and aggregation, either init.
        log_decay: [B, T, H, Dk] ``g_t`` (finite, <= 0).
    """
    (q_c, k, v, u), gates, _ = to_compute_dtype(q, k, v, u, {"log_decay": log_decay})
    log_decay = gates["log_decay"]

    def step(state: torch.Tensor, b: int, t: int, h: int, segment_start: bool) -> torch.Tensor:
        return gla_step(state, k[b, t, h], v[b, t, h], log_decay[b, t, h])

    return token_loop(q_c, k, u, v.shape[-1], step, spec).to(q.dtype), None


def gla_step(
    state: torch.Tensor, key: torch.Tensor, value: torch.Tensor, log_decay: torch.Tensor
) -> torch.Tensor:
    """``Diag(exp(g)) M + k v^T`` for one token: state [Dk, Dv], key and ``log_decay`` [Dk], value [Dv]."""
    return log_decay.exp().unsqueeze(-1) * state + torch.outer(key, value)
