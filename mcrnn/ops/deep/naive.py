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
those of DESIGN.md §3 with gates from :func:`mcrnn.ops.read.segments.router_gates`; ``soup`` mixes the
weights per layer, ``W*_l = sum_i g_i W_l(i) + g_s W_{l,t}``, and reads the mixed network once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mcrnn.ops.deep import network
from mcrnn.ops.deep.log_naive import naive_deep_log_memory_caching
from mcrnn.ops.deep.rule import Rates, write_token
from mcrnn.ops.inputs import to_compute_dtype
from mcrnn.ops.read.segments import router_gates, segment_contexts, segment_index
from mcrnn.ops.spec import MCSpec


def naive_deep_memory_caching(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor,
    *,
    spec: MCSpec,
    memory: str,
    params: Sequence[torch.Tensor],
    rates: Rates,
    chunk_size: int,
) -> torch.Tensor:
    """Reference output ``o`` [B, T, H, Dv] for validated inputs (see :func:`mcrnn.ops.memory_caching`) and
    the segments of ``spec`` (not ``log``)."""
    batch, seq_len = q.shape[:2]
    lengths = spec.lengths(seq_len)
    seg = segment_index(lengths, q.device)
    contexts, online_context = segment_contexts(k, lengths, spec.pooling)
    gates, online_gate, _ = router_gates(u, contexts, online_context, seg, spec.aggregation, spec.top_k)
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
            if spec.init == "independent":
                weights = list(initial)
                momentum = [torch.zeros_like(w) for w in initial] if momentum is not None else None
        if (t - starts[s]) % chunk_size == 0:
            chunk_start = weights
        weights, momentum = write_token(memory, weights, momentum, chunk_start, k[:, t], v[:, t], rates.at(t))
        query = q[:, t].unsqueeze(-2)  # [B, H, 1, Dk]
        g_cached = gates[:, t]  # [B, H, N]
        g_online = online_gate[:, t, :, None, None]
        if spec.aggregation == "soup":
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


def cast_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor | None,
    params: Sequence[torch.Tensor],
    rates: Rates,
) -> tuple[tuple[torch.Tensor, ...], list[torch.Tensor], Rates]:
    """Inputs, weights and rates in the accumulation dtype (``u = q`` when None)."""
    gates = {"eta": rates.eta, "alpha": rates.alpha, "momentum": rates.momentum}
    inputs, gates, dtype = to_compute_dtype(q, k, v, u, gates, *params)
    return inputs, [w.to(dtype) for w in params], Rates(**gates, mask=rates.mask)


def naive_deep_mc(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor | None = None,
    *,
    spec: MCSpec,
    memory: str,
    params: Sequence[torch.Tensor],
    eta: torch.Tensor,
    alpha: torch.Tensor,
    momentum: torch.Tensor | None = None,
    chunk_size: int,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, None]:
    """The definition, every segmentation: ``o`` [B, T, H, Dv] in ``q``'s dtype and no cache.

    Args (as :func:`mcrnn.ops.memory_caching`, not re-checked): ``params`` the initial weights (one
    ``[H, d_out, d_in]`` per layer); ``eta``, ``alpha``, ``momentum`` (``titans``) [B, T, H] the rates of
    :class:`~mcrnn.ops.deep.rule.Rates`; ``mask`` [B, T] bool; ``chunk_size`` the inner chunk (part of the
    model).
    """
    inputs, params, rates = cast_inputs(q, k, v, u, params, Rates(eta, alpha, momentum, mask))
    options = {"spec": spec, "memory": memory, "params": params, "rates": rates, "chunk_size": chunk_size}
    if spec.kind == "log":
        out = naive_deep_log_memory_caching(*inputs, **options)
    else:
        out = naive_deep_memory_caching(*inputs, **options)
    return out.to(q.dtype), None
