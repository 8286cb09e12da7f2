"""The definition of Memory Caching over the ``gla`` memory: a plain loop over tokens.

Per batch element and head, with a decay per key channel (fla's gated linear attention)::

    M_t = Diag(exp(g_t)) M_{t-1} + k_t v_t^T,   g_t in R^Dk finite, <= 0

read after the token is written, ``q_t^T M_t`` (no ``1/sqrt(Dk)`` scale: fla's default is the caller's
to apply to ``q``). Segments, contexts, inits and the aggregation are those of the matrix memories'
definition (:func:`mcrnn.ops.linear.naive.segment_loop`, :func:`mcrnn.ops.log.naive.fenwick_loop`); only
the step below is GLA's. A GLA state is linear in its writes, so the log segmentation works under both
inits.
"""

from __future__ import annotations

import torch

from mcrnn.ops.inputs import to_compute_dtype
from mcrnn.ops.linear.naive import segment_loop
from mcrnn.ops.log.naive import fenwick_loop
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

    def step(state: torch.Tensor, b: int, t: int, h: int, segment_start: bool = False) -> torch.Tensor:
        return gla_step(state, k[b, t, h], v[b, t, h], log_decay[b, t, h])

    if spec.kind == "log":
        out = fenwick_loop(q_c, k, u, v.shape[-1], step, spec)
    else:
        lengths = spec.lengths(q.shape[1])
        options = (spec.aggregation, spec.init, spec.top_k, spec.pooling)
        out = segment_loop(q_c, k, u, v.shape[-1], lengths, step, *options)
    return out.to(q.dtype), None


def gla_step(
    state: torch.Tensor, key: torch.Tensor, value: torch.Tensor, log_decay: torch.Tensor
) -> torch.Tensor:
    """``Diag(exp(g)) M + k v^T`` for one token: state [Dk, Dv], key and ``log_decay`` [Dk], value [Dv]."""
    return log_decay.exp().unsqueeze(-1) * state + torch.outer(key, value)
