"""Decoding MC over the ``gla`` memory: one token at a time.

The GLA write ``M_t = Diag(a_t) M_{t-1} + k_t v_t^T`` is a matrix-memory write with a vector decay, so
the decode step is the matrix memories' (:func:`mcrnn.ops.linear.recurrent.recurrent_step` on a
:class:`~mcrnn.ops.linear.MatrixMemoryCache`) with ``decay = exp(g_t)`` [B, H, Dk].
"""

from __future__ import annotations

import torch

from mcrnn.ops.linear.recurrent import MatrixMemoryCache, recurrent_step


def recurrent_gla_mc(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor | None = None,
    *,
    cache: MatrixMemoryCache,
    log_decay: torch.Tensor,
) -> tuple[torch.Tensor, MatrixMemoryCache]:
    """Continue ``cache`` over [B, T, H, D] inputs token by token (the decoding path, not training).

    Args:
        q, k, u: [B, T, H, Dk] (``u`` None: ``u = q``); v: [B, T, H, Dv]; log_decay: [B, T, H, Dk].

    Returns: ``o`` [B, T, H, Dv] in ``q``'s dtype and a new cache (the one passed in is not modified).
    """
    dtype = cache.online.dtype
    u = q if u is None else u
    outputs = []
    for t in range(q.shape[1]):
        q_t, k_t, v_t, u_t = (x[:, t].to(dtype) for x in (q, k, v, u))
        decay = log_decay[:, t].to(dtype).exp()
        y, cache = recurrent_step(q_t, k_t, v_t, u_t, cache, decay=decay, prev_gate=None, cur_gate=None)
        outputs.append(y)
    return torch.stack(outputs, dim=1).to(q.dtype), cache
