"""Decoding MC over the ``kda`` memory: one token at a time.

The KDA write is a linear write of the pseudo-value ``w_t = b_t (v_t - M'_t^T k_t)``, ``M'_t =
Diag(a_t) M_{t-1}``::

    M'_t + b_t k_t (v_t - M'_t^T k_t)^T = Diag(a_t) M_{t-1} + k_t w_t^T

so the decode step keeps the matrix memories' :class:`~mcrnn.ops.linear.MatrixMemoryCache` and runs
their step (:func:`mcrnn.ops.linear.recurrent.recurrent_step`, vector decay ``a_t`` [B, H, Dk]) on
``w_t``; ``M_{t-1}`` is the zero state at a segment start under ``init="independent"``.
"""

from __future__ import annotations

import torch

from mcrnn.ops.linear.recurrent import MatrixMemoryCache, recurrent_step


def recurrent_kda_mc(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor | None = None,
    *,
    cache: MatrixMemoryCache,
    log_decay: torch.Tensor,
    beta: torch.Tensor,
) -> tuple[torch.Tensor, MatrixMemoryCache]:
    """Continue ``cache`` over [B, T, H, D] inputs token by token (the decoding path, not training).

    Args:
        q, k, u: [B, T, H, Dk] (``u`` None: ``u = q``); v: [B, T, H, Dv]; log_decay: [B, T, H, Dk];
        beta: [B, T, H].

    Returns: ``o`` [B, T, H, Dv] in ``q``'s dtype and a new cache (the one passed in is not modified).
    """
    dtype = cache.online.dtype
    u = q if u is None else u
    outputs = []
    for t in range(q.shape[1]):
        q_t, k_t, v_t, u_t = (x[:, t].to(dtype) for x in (q, k, v, u))
        decay = log_decay[:, t].to(dtype).exp()
        restarts = cache.spec.init == "independent" and cache.spec.starts_segment(cache.position)
        previous = torch.zeros_like(cache.online) if restarts else cache.online
        predicted = torch.einsum("bhk,bhkv->bhv", k_t * decay, previous)  # M'^T k
        pseudo_v = beta[:, t].to(dtype).unsqueeze(-1) * (v_t - predicted)
        y, cache = recurrent_step(q_t, k_t, pseudo_v, u_t, cache, decay=decay, prev_gate=None, cur_gate=None)
        outputs.append(y)
    return torch.stack(outputs, dim=1).to(q.dtype), cache
