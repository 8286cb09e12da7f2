"""The definition of Memory Caching over deep memories: a loop over inner chunks and tokens.

Slow on purpose, written to be read against DESIGN.md §3-§6; the fast path (``chunk.py``) and the
decode step (``recurrent.py``) are tested against it in float64. Vectorised over batch and heads only.

Inner rule, with chunks of ``b = chunk_size`` tokens counted from each segment's start and
``theta_0`` the weights at the start of the chunk containing ``t`` (mini-batch gradient descent:
every gradient of a chunk is taken at ``theta_0``; ``b = 1`` is the exact online rule):

- ``dla``:    ``theta_t = a_t theta_{t-1} - eta_t grad l_t(theta_0)``, ``l_t = -<f(k_t), v_t>``;
- ``titans``: ``S_t = b_t S_{t-1} - eta_t grad l_t(theta_0)``, ``theta_t = a_t theta_{t-1} + S_t``,
  ``l_t = ||f(k_t) - v_t||^2`` (gradient descent).

Read: token ``t`` reads ``theta_t``, the weights after its own write (inclusive, as in DESIGN.md §2).
Under the chunked rule ``theta_t`` is the chunk-start weights plus the retained updates of the chunk's
tokens ``<= t`` only, so the read never sees a later token; ``b = 1`` gives the online rule's
read-after-write. (Titans reads the same per-token weights in its parallel form; an implementation
that reads only weights of completed chunks would be causal too but lags up to ``b - 1`` tokens.)

A token with ``mask = False`` is an identity step: no write, no retention, no momentum change
(``theta_t = theta_{t-1}``, ``S_t = S_{t-1}``); it still reads ``theta_t`` and still counts for the
chunk and segment boundaries and for the router contexts (which pool every key).

MC: at the first token of segment ``s > 1`` the online weights are cached (momentum is not);
``init="independent"`` restarts from the initial weights with zero momentum. The aggregations are
those of DESIGN.md §3 with gates from :func:`mcrnn.ops.segments.router_gates`; ``soup`` mixes the
weights per layer, ``W*_l = sum_i g_i W_l(i) + g_s W_{l,t}``, and reads the mixed network once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mcrnn.ops.deep import network
from mcrnn.ops.segments import router_gates, segment_contexts, segment_index


def naive_deep_memory_caching(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor,
    lengths: Sequence[int],
    *,
    memory: str,
    params: Sequence[torch.Tensor],
    eta: torch.Tensor,
    alpha: torch.Tensor,
    beta: torch.Tensor | None,
    chunk_size: int,
    aggregation: str,
    init: str,
    top_k: int | None,
    pooling: str,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference output ``o`` [B, T, H, Dv] for validated inputs (see :func:`mcrnn.ops.memory_caching`);
    ``mask`` [B, T] bool (``None``: every token writes)."""
    batch, seq_len = q.shape[:2]
    seg = segment_index(lengths, q.device)
    contexts, online_context = segment_contexts(k, lengths, pooling)
    gates, online_gate, _ = router_gates(u, contexts, online_context, seg, aggregation, top_k)
    starts = torch.tensor([0, *lengths[:-1]]).cumsum(0).tolist()
    initial = [w.unsqueeze(0).expand(batch, *w.shape) for w in params]
    weights = list(initial)
    momentum = [torch.zeros_like(w) for w in initial] if memory == "titans" else None
    cached: list[list[torch.Tensor]] = []
    outputs = []
    for t in range(seq_len):
        s = int(seg[t])
        if t > 0 and t == starts[s]:
            cached.append(weights)
            if init == "independent":
                weights = list(initial)
                momentum = [torch.zeros_like(w) for w in initial] if momentum is not None else None
        if (t - starts[s]) % chunk_size == 0:
            chunk_start = weights
        keep = None if mask is None else mask[:, t]
        weights, momentum = write_token(
            memory, weights, momentum, chunk_start, k, v, eta, alpha, beta, keep, t
        )
        query = q[:, t].unsqueeze(-2)  # [B, H, 1, Dk]
        g_cached = gates[:, t]  # [B, H, N]
        g_online = online_gate[:, t, :, None, None]
        if aggregation == "soup":
            mixed = [g_online * w for w in weights]
            for i, state in enumerate(cached):
                mixed = [m + g_cached[:, :, i, None, None] * w for m, w in zip(mixed, state, strict=True)]
            out = network.forward(mixed, query)
        else:
            out = g_online * network.forward(weights, query)
            for i, state in enumerate(cached):
                out = out + g_cached[:, :, i, None, None] * network.forward(state, query)
        outputs.append(out.squeeze(-2))
    return torch.stack(outputs, dim=1)


def write_token(
    memory: str,
    weights: list[torch.Tensor],
    momentum: list[torch.Tensor] | None,
    chunk_start: list[torch.Tensor],
    k: torch.Tensor,
    v: torch.Tensor,
    eta: torch.Tensor,
    alpha: torch.Tensor,
    beta: torch.Tensor | None,
    keep: torch.Tensor | None,
    t: int,
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """Token ``t`` of the chunked rule: ``(theta_t, S_t)`` from ``(theta_{t-1}, S_{t-1})`` with the gradient
    at ``chunk_start`` (``theta_0``); ``k, v`` [B, T, H, D], rates [B, T, H], ``keep`` [B] bool or None
    (a token not kept is an identity step)."""
    grads = _autograd_gradients(memory, chunk_start, k[:, t], v[:, t])
    step = eta[:, t, :, None, None]
    retain = alpha[:, t, :, None, None]
    keep = None if keep is None else keep[:, None, None, None]  # [B, 1, 1, 1]
    if momentum is not None:
        new_momentum = [
            beta[:, t, :, None, None] * m - step * g for m, g in zip(momentum, grads, strict=True)
        ]
        new_weights = [retain * w + m for w, m in zip(weights, new_momentum, strict=True)]
        momentum = where_kept(keep, new_momentum, momentum)
    else:
        new_weights = [retain * w - step * g for w, g in zip(weights, grads, strict=True)]
    return where_kept(keep, new_weights, weights), momentum


def where_kept(
    keep: torch.Tensor | None, new: list[torch.Tensor], old: list[torch.Tensor]
) -> list[torch.Tensor]:
    """``new`` where ``keep`` (``None``: everywhere), else ``old``, per layer."""
    if keep is None:
        return new
    return [torch.where(keep, n, o) for n, o in zip(new, old, strict=True)]


def _autograd_gradients(
    memory: str, weights: list[torch.Tensor], k: torch.Tensor, v: torch.Tensor
) -> list[torch.Tensor]:
    """``grad_theta l(theta; k, v)`` at ``weights`` [B, H, ...] by autograd, keeping the graph."""
    with torch.enable_grad():
        at = [w if w.requires_grad else w.detach().requires_grad_() for w in weights]
        loss = network.inner_loss(memory, network.forward(at, k.unsqueeze(-2)), v.unsqueeze(-2)).sum()
        return list(torch.autograd.grad(loss, at, create_graph=True))
