"""Recurrent (decoding) form of MC over delta-rule memories: one token at a time.

The delta write is a linear write of the pseudo-value ``w_t = b_t (v_t - a_t M_{t-1}^T k_t)``::

    a_t (I - b_t k_t k_t^T) M_{t-1} + b_t k_t v_t^T = a_t M_{t-1} + k_t w_t^T

so the decode step keeps exactly the :class:`~mcrnn.ops.read.matrix_cache.MatrixMemoryCache` of ``linear``
(online state, cached states and contexts, the current segment's key sum and token count) and runs
the shared step (:func:`mcrnn.ops.read.matrix_cache.recurrent_step`) on the write ``k_t w_t^T``;
``M_{t-1}`` is the zero state at a segment start under ``init="independent"``
(:func:`~mcrnn.ops.read.matrix_cache.open_token`).
With the log segmentation (``checkpoint``) the :class:`~mcrnn.ops.read.fenwick_cache.FenwickMemoryCache`
keeps the prefix state online, and the Fenwick step (:func:`mcrnn.ops.read.fenwick_cache.fenwick_step`)
takes the same write.
"""

from __future__ import annotations

import torch

from mcrnn.ops.inputs import compute_dtype
from mcrnn.ops.read.fenwick_cache import FenwickMemoryCache, matrix_token_step
from mcrnn.ops.read.matrix_cache import MatrixMemoryCache, open_token


def recurrent_delta_mc(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor | None = None,
    *,
    cache: MatrixMemoryCache | FenwickMemoryCache,
    log_decay: torch.Tensor | None = None,
    beta: torch.Tensor,
) -> tuple[torch.Tensor, MatrixMemoryCache | FenwickMemoryCache]:
    """Continue ``cache`` over [B, T, H, D] inputs token by token (the decoding path, not training).

    Args:
        q, k, u: [B, T, H, Dk] (``u`` None: ``u = q``); v: [B, T, H, Dv]; log_decay: [B, T, H] or None
        (``deltanet``); beta: [B, T, H].

    Returns: ``o`` [B, T, H, Dv] in ``q``'s dtype and a new cache (the one passed in is not modified).
    """
    dtype = compute_dtype(q, cache.online)  # float32 states for bf16/fp16 inputs or cache, as in training
    cache = cache.to_dtype(dtype)
    u = q if u is None else u
    outputs = []
    for t in range(q.shape[1]):
        q_t, k_t, v_t, u_t = (x[:, t].to(dtype) for x in (q, k, v, u))
        step_log_decay = None if log_decay is None else log_decay[:, t].to(dtype)
        decay = None if step_log_decay is None else step_log_decay.exp()
        if isinstance(cache, MatrixMemoryCache):
            cache = open_token(cache)  # the state this token writes into: zero after an independent restart
        predicted = torch.einsum("bhk,bhkv->bhv", k_t, cache.online)  # M_{t-1}^T k_t
        if decay is not None:
            predicted = decay.unsqueeze(-1) * predicted
        pseudo_v = beta[:, t].to(dtype).unsqueeze(-1) * (v_t - predicted)
        write = k_t.unsqueeze(-1) * pseudo_v.unsqueeze(-2)
        # log (checkpoint only): the Fenwick cache's online state is the prefix state
        y, cache = matrix_token_step(q_t, k_t, u_t, cache=cache, write=write, log_decay=step_log_decay)
        outputs.append(y)
    return torch.stack(outputs, dim=1).to(q.dtype), cache
