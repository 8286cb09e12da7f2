"""Decoding MC over the ``gla`` memory: one token at a time.

The family's part is the token's write ``k_t v_t^T`` and its decay ``Diag(exp(g_t))`` [B, H, Dk]; the
segment bookkeeping, the state update and the aggregated read are the read side's steps
(:func:`mcrnn.ops.read.matrix_cache.recurrent_step` on a :class:`~mcrnn.ops.read.MatrixMemoryCache`,
:func:`mcrnn.ops.read.fenwick_cache.fenwick_step` on a :class:`~mcrnn.ops.read.FenwickMemoryCache`).
"""

from __future__ import annotations

import torch

from mcrnn.ops.inputs import compute_dtype
from mcrnn.ops.read.fenwick_cache import FenwickMemoryCache, matrix_token_step
from mcrnn.ops.read.matrix_cache import MatrixMemoryCache, open_token


def recurrent_gla_mc(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor | None = None,
    *,
    cache: MatrixMemoryCache | FenwickMemoryCache,
    log_decay: torch.Tensor,
) -> tuple[torch.Tensor, MatrixMemoryCache | FenwickMemoryCache]:
    """Continue ``cache`` over [B, T, H, D] inputs token by token (the decoding path, not training).

    Args:
        q, k, u: [B, T, H, Dk] (``u`` None: ``u = q``); v: [B, T, H, Dv]; log_decay: [B, T, H, Dk].

    Returns: ``o`` [B, T, H, Dv] in ``q``'s dtype and a new cache (the one passed in is not modified).
    """
    dtype = compute_dtype(q, cache.online)  # float32 states for bf16/fp16 inputs or cache, as in training
    cache = cache.to_dtype(dtype)
    u = q if u is None else u
    outputs = []
    for t in range(q.shape[1]):
        q_t, k_t, v_t, u_t = (x[:, t].to(dtype) for x in (q, k, v, u))
        step_log_decay = log_decay[:, t].to(dtype)
        write = k_t.unsqueeze(-1) * v_t.unsqueeze(-2)
        if isinstance(cache, MatrixMemoryCache):
            cache = open_token(cache)
        y, cache = matrix_token_step(q_t, k_t, u_t, cache=cache, write=write, log_decay=step_log_decay)
        outputs.append(y)
    return torch.stack(outputs, dim=1).to(q.dtype), cache
