"""Decoding MC over the ``kda`` memory: one token at a time.

The KDA write is a linear write of the pseudo-value ``w_t = b_t (v_t - M'_t^T k_t)``, ``M'_t =
Diag(a_t) M_{t-1}``::

    M'_t + b_t k_t (v_t - M'_t^T k_t)^T = Diag(a_t) M_{t-1} + k_t w_t^T

so the family's part is the write ``k_t w_t^T`` and the decay ``a_t`` [B, H, Dk]; the read side's steps
do the rest (:func:`mcrnn.ops.read.matrix_cache.recurrent_step` on a
:class:`~mcrnn.ops.read.MatrixMemoryCache`, whose :func:`~mcrnn.ops.read.matrix_cache.open_token` gives
the zero state at a segment start under ``init="independent"``; with the log segmentation, checkpoint
only, :func:`mcrnn.ops.read.fenwick_cache.fenwick_step` keeps the prefix state online).
"""

from __future__ import annotations

import torch

from mcrnn.ops.inputs import compute_dtype
from mcrnn.ops.read.fenwick_cache import FenwickMemoryCache, matrix_token_step
from mcrnn.ops.read.matrix_cache import MatrixMemoryCache, open_token


def recurrent_kda_mc(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor | None = None,
    *,
    cache: MatrixMemoryCache | FenwickMemoryCache,
    log_decay: torch.Tensor,
    beta: torch.Tensor,
) -> tuple[torch.Tensor, MatrixMemoryCache | FenwickMemoryCache]:
    """Continue ``cache`` over [B, T, H, D] inputs token by token (the decoding path, not training).

    Args:
        q, k, u: [B, T, H, Dk] (``u`` None: ``u = q``); v: [B, T, H, Dv]; log_decay: [B, T, H, Dk];
        beta: [B, T, H].

    Returns: ``o`` [B, T, H, Dv] in ``q``'s dtype and a new cache (the one passed in is not modified).
    """
    dtype = compute_dtype(q, cache.online)  # float32 states for bf16/fp16 inputs or cache, as in training
    cache = cache.to_dtype(dtype)
    u = q if u is None else u
    outputs = []
    for t in range(q.shape[1]):
        q_t, k_t, v_t, u_t = (x[:, t].to(dtype) for x in (q, k, v, u))
        step_log_decay = log_decay[:, t].to(dtype)
        if isinstance(cache, MatrixMemoryCache):
            cache = open_token(cache)  # the state this token writes into: zero after an independent restart
        predicted = torch.einsum("bhk,bhkv->bhv", k_t * step_log_decay.exp(), cache.online)  # M'^T k
        pseudo_v = beta[:, t].to(dtype).unsqueeze(-1) * (v_t - predicted)
        write = k_t.unsqueeze(-1) * pseudo_v.unsqueeze(-2)
        y, cache = matrix_token_step(q_t, k_t, u_t, cache=cache, write=write, log_decay=step_log_decay)
        outputs.append(y)
    return torch.stack(outputs, dim=1).to(q.dtype), cache
