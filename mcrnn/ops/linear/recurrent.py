"""Recurrent (decoding) form of MC over matrix memories: one token at a time, with a growing cache.

The cache carries what the next token needs: the online state, the states cached at the end of every
finished segment with their router keys, the running key sum of the current segment and, for
``swla``, the previous token's key and value. A finished segment is pushed to the cache lazily, when
the first token of the next segment arrives, exactly as in the token-loop definition.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from mcrnn.ops.inputs import full_precision, to_compute_dtype
from mcrnn.ops.read.fenwick_cache import FenwickMemoryCache, matrix_token_step
from mcrnn.ops.read.matrix_cache import MatrixMemoryCache, open_token


def token_write(
    k: torch.Tensor,
    v: torch.Tensor,
    cur_gate: torch.Tensor | None = None,
    prev_gate: torch.Tensor | None = None,
    prev_key: torch.Tensor | None = None,
    prev_value: torch.Tensor | None = None,
) -> torch.Tensor:
    """One token's write into a matrix memory, [B, H, Dk, Dv]: ``k v^T`` (``linear``; ``cur_gate`` None) or
    ``swla``'s ``l_t k_t v_t^T + b_t k_{t-1} v_{t-1}^T`` (``cur_gate`` = l_t, ``prev_gate`` = b_t [B, H]; the
    previous-token term only when ``prev_key``/``prev_value`` [B, H, D] are given)."""
    write = k.unsqueeze(-1) * v.unsqueeze(-2)
    if cur_gate is None:
        return write
    write = cur_gate[..., None, None] * write
    if prev_key is not None:
        write = write + prev_gate[..., None, None] * prev_key.unsqueeze(-1) * prev_value.unsqueeze(-2)
    return write


def recurrent_linear_mc(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor | None = None,
    *,
    cache: MatrixMemoryCache | FenwickMemoryCache,
    log_decay: torch.Tensor | None = None,
    prev_gate: torch.Tensor | None = None,
    cur_gate: torch.Tensor | None = None,
) -> tuple[torch.Tensor, MatrixMemoryCache | FenwickMemoryCache]:
    """Continue ``cache`` over [B, T, H, D] inputs token by token (the decoding path, not training;
    ``u`` None: ``u = q``), every segmentation: a :class:`MatrixMemoryCache` (constant, explicit or no
    segments) or a :class:`FenwickMemoryCache` (log).

    ``swla`` (``cache.memory``) takes its gates ``prev_gate``, ``cur_gate``. The family's part is the
    token's write (:func:`token_write`) and its decay; the segment bookkeeping, the state update and the
    aggregated read are the shared steps
    (:func:`mcrnn.ops.read.matrix_cache.recurrent_step`, :func:`mcrnn.ops.read.fenwick_cache.fenwick_step`).
    The gates are [B, T, H] as in :func:`mcrnn.ops.memory_caching`. As the parallel path, the step
    accumulates in float32 (float64 for float64 inputs or cache) whatever the inputs' dtype; the new cache
    holds states in that dtype. Returns ``o`` [B, T, H, Dv] in ``q``'s dtype and a new cache (the one
    passed in is not modified).
    """
    gates = {"log_decay": log_decay, "prev_gate": prev_gate, "cur_gate": cur_gate}
    (q_c, k, v, u), gates, dtype = to_compute_dtype(q, k, v, u, gates, cache.online)
    log_decay, prev_gate, cur_gate = gates["log_decay"], gates["prev_gate"], gates["cur_gate"]
    cache = cache.to_dtype(dtype)
    swla = cache.memory == "swla"
    outputs = []
    with full_precision(q.device):
        for t in range(q.shape[1]):
            if isinstance(cache, MatrixMemoryCache):
                cache = open_token(cache)
            write = token_write(
                k[:, t],
                v[:, t],
                cur_gate[:, t] if swla else None,
                prev_gate[:, t] if swla else None,
                cache.prev_key,
                cache.prev_value,
            )
            step_log_decay = None if log_decay is None else log_decay[:, t]
            q_t, k_t, u_t = q_c[:, t], k[:, t], u[:, t]
            y, cache = matrix_token_step(q_t, k_t, u_t, cache=cache, write=write, log_decay=step_log_decay)
            if swla:
                cache = replace(cache, prev_key=k[:, t], prev_value=v[:, t])
            outputs.append(y)
    return torch.stack(outputs, dim=1).to(q.dtype), cache
