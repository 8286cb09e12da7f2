"""Chunk-parallel deep-memory MC: batched hand-derived inner gradients, a loop over chunks only.

Same model as :mod:`mcrnn.ops.deep.naive`; layout ``[B, H, T, D]`` inside. For one chunk of ``c``
tokens with start weights ``W_l`` (momentum ``S_l``), per-token gradients are rank one,
``grad_{W_l} l_j = delta_{l,j} a_{l-1,j}^T`` (:func:`network.key_gradients`, all at the chunk start).
With ``A_t = prod_{m<=t} a_m`` and ``B_t = prod_{m<=t} b_m`` over the chunk, unrolling
``S_t = b_t S_{t-1} - eta_t g_t`` and ``theta_t = a_t theta_{t-1} + S_t`` gives

    theta_t = A_t theta_0 + P_t S_0 - sum_{i<=t} M_{ti} eta_i g_i,
    S_t     = B_t S_0 - sum_{i<=t} (B_t / B_i) eta_i g_i,

    P_t = sum_{j<=t} (A_t / A_j) B_j,    M_{ti} = sum_{i<=j<=t} (A_t / A_j)(B_j / B_i),

i.e. ``M = D_A D_B`` for the lower-triangular decay matrices ``D_A[t, j] = A_t / A_j`` (formed as
``exp`` of differences of log cumsums, masked before the ``exp``). ``dla`` has no momentum:
``M = D_A``, ``P = 0``. Reading layer ``l`` of ``theta_t`` on any input ``x_t`` is then attention-like:

    W_{l,t} x_t = A_t W_l x_t + P_t S_l x_t - sum_{i<=t} M_{ti} eta_i (a_{l-1,i} . x_t) delta_{l,i},

one ``[c, c]`` masked score matrix per layer and no per-token weights. The chunk-end state is row
``t = c`` of the same sums, a weighted ``delta^T a`` matmul.

Aggregations: the online read runs layer by layer with these sums; cached memories (weights at
segment ends) are read after the chunk loop, one state at a time over the contiguous tokens after
its segment (``residual``, ``grm``, ``average``), or only over the tokens that selected it (``ssc``:
gathered per state, so each token pays for ``top_k`` reads, not ``N``). ``soup`` mixes parameters
per token without forming them: every layer of the mixed network is linear in its weights, so

    W*_{l,t} x_t = g_{t,s} W_{l,t} x_t + sum_{i<s} g_{t,i} W_l(i) x_t,

evaluated for all cached states at once as one matmul against the concatenated ``W_l(i)^T`` on the
mixed activation ``x_t = a*_{l-1,t}``; the GELU between layers is applied to the mixed ``z*``, so the
next layer again receives one vector per token. Cost: ``N`` reads per token, like ``grm``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mcrnn.ops.deep import network
from mcrnn.ops.segments import router_gates, segment_contexts, segment_index


@dataclass
class ChunkCoefficients:
    """Per-chunk sums of the unrolled rule (``[B, H, c]`` / ``[B, H, c, c]``)."""

    retain: torch.Tensor  # A_t
    carry: torch.Tensor | None  # P_t (titans)
    mix: torch.Tensor  # M_{ti} eta_i
    momentum_mix: torch.Tensor | None  # (B_c / B_i) eta_i, last row only (titans) [B, H, c]
    momentum_retain: torch.Tensor | None  # B_c [B, H]


def decay_matrix(log_cum: torch.Tensor) -> torch.Tensor:
    """``D[t, j] = exp(L_t - L_j)`` for ``j <= t``, else 0; ``log_cum`` [..., c] -> [..., c, c]."""
    size = log_cum.shape[-1]
    upper = torch.ones(size, size, dtype=torch.bool, device=log_cum.device).triu(1)
    diff = log_cum.unsqueeze(-1) - log_cum.unsqueeze(-2)
    return torch.exp(diff.masked_fill(upper, float("-inf")))


def safe_log(x: torch.Tensor) -> torch.Tensor:
    """``log`` with 0 mapped to ``log(tiny)`` so cumulative differences stay finite (NaN kept)."""
    return torch.log(x.clamp_min(torch.finfo(x.dtype).tiny))


def chunk_coefficients(
    eta: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor | None
) -> ChunkCoefficients:
    """Coefficients of the unrolled chunk rule for gates ``[B, H, c]`` (see the module docstring)."""
    log_a = torch.cumsum(safe_log(alpha), dim=-1)
    decay_a = decay_matrix(log_a)
    if beta is None:
        return ChunkCoefficients(torch.exp(log_a), None, decay_a * eta.unsqueeze(-2), None, None)
    log_b = torch.cumsum(safe_log(beta), dim=-1)
    decay_b = decay_matrix(log_b)
    carry = (decay_a @ torch.exp(log_b).unsqueeze(-1)).squeeze(-1)
    mix = (decay_a @ decay_b) * eta.unsqueeze(-2)
    return ChunkCoefficients(
        torch.exp(log_a), carry, mix, decay_b[..., -1, :] * eta, torch.exp(log_b[..., -1])
    )


def online_layer(
    layer: int,
    x: torch.Tensor,
    weights: Sequence[torch.Tensor],
    momentum: Sequence[torch.Tensor] | None,
    inputs: Sequence[torch.Tensor],
    deltas: Sequence[torch.Tensor],
    coef: ChunkCoefficients,
) -> torch.Tensor:
    """``W_{l,t} x_t`` for every token of the chunk, ``x`` [B, H, c, d_in] -> [B, H, c, d_out]."""
    out = coef.retain.unsqueeze(-1) * (x @ weights[layer].transpose(-1, -2))
    if momentum is not None:
        out = out + coef.carry.unsqueeze(-1) * (x @ momentum[layer].transpose(-1, -2))
    scores = (x @ inputs[layer].transpose(-1, -2)) * coef.mix
    return out - scores @ deltas[layer]


def chunk_update(
    weights: Sequence[torch.Tensor],
    momentum: Sequence[torch.Tensor] | None,
    inputs: Sequence[torch.Tensor],
    deltas: Sequence[torch.Tensor],
    coef: ChunkCoefficients,
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """Weights (and momentum) after the chunk: the last row of the unrolled sums."""
    last = coef.mix[..., -1, :].unsqueeze(-1)
    retain = coef.retain[..., -1, None, None]
    new_w = []
    for l, w in enumerate(weights):
        step = (deltas[l] * last).transpose(-1, -2) @ inputs[l]
        w_new = retain * w - step
        if momentum is not None:
            w_new = w_new + coef.carry[..., -1, None, None] * momentum[l]
        new_w.append(w_new)
    if momentum is None:
        return new_w, None
    m_last = coef.momentum_mix.unsqueeze(-1)
    m_retain = coef.momentum_retain[..., None, None]
    new_m = [
        m_retain * m - (d * m_last).transpose(-1, -2) @ a
        for m, d, a in zip(momentum, deltas, inputs, strict=True)
    ]
    return new_w, new_m


@dataclass
class ChunkResult:
    """Output ``[B, T, H, Dv]`` and the state after the last token (for a decoding cache)."""

    output: torch.Tensor
    weights: list[torch.Tensor]
    momentum: list[torch.Tensor] | None
    chunk_start: list[torch.Tensor]
    cached: list[list[torch.Tensor]]


def chunk_deep_memory_caching(
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
) -> ChunkResult:
    """Fast MC output for validated inputs (see ``deep_memory_caching``) and the final state."""
    batch = q.shape[0]
    seg = segment_index(lengths, q.device)
    contexts, online_context = segment_contexts(k, lengths, pooling)
    gates, online_gate, _ = router_gates(u, contexts, online_context, seg, aggregation, top_k)
    gates, online_gate = gates.transpose(1, 2), online_gate.transpose(1, 2)  # [B, H, T, N], [B, H, T]
    qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))
    eta, alpha = eta.transpose(1, 2), alpha.transpose(1, 2)
    beta = beta.transpose(1, 2) if beta is not None else None
    sizes = [min(chunk_size, n - lo) for n in lengths for lo in range(0, n, chunk_size)]
    # split once (a slice per chunk would cost a full-size zero tensor per chunk in backward)
    pieces = [torch.split(x, sizes, dim=2) for x in (qh, kh, vh)]
    pieces += [torch.split(x, sizes, dim=-1) for x in (eta, alpha)]
    pieces.append(torch.split(beta, sizes, dim=-1) if beta is not None else [None] * len(sizes))
    if aggregation == "soup":
        pieces += [torch.split(gates, sizes, dim=2), torch.split(online_gate, sizes, dim=2)]
    chunks = iter(zip(*pieces, strict=True))
    initial = [w.unsqueeze(0).expand(batch, *w.shape) for w in params]
    weights, momentum = list(initial), _zero_momentum(initial, memory)
    chunk_start = weights
    cached: list[list[torch.Tensor]] = []
    stacked: list[torch.Tensor] = []
    online_reads = []
    for s, length in enumerate(lengths):
        if s > 0:
            cached.append(weights)
            if aggregation == "soup":
                stacked = [
                    torch.cat([state[l].transpose(-1, -2) for state in cached], -1)
                    for l in range(len(params))
                ]
            if init == "independent":
                weights, momentum = list(initial), _zero_momentum(initial, memory)
        for _ in range(0, length, chunk_size):
            qc, kc, vc, eta_c, alpha_c, beta_c, *gate_c = next(chunks)
            chunk_start = weights
            inputs, deltas = network.key_gradients(memory, weights, kc, vc)
            coef = chunk_coefficients(eta_c, alpha_c, beta_c)
            if aggregation == "soup":
                read = _soup_read(
                    qc, weights, momentum, inputs, deltas, coef, stacked, gate_c[0][..., :s], gate_c[1]
                )
            else:
                read = _online_read(qc, weights, momentum, inputs, deltas, coef)
            online_reads.append(read)
            weights, momentum = chunk_update(weights, momentum, inputs, deltas, coef)
    out = torch.cat(online_reads, dim=2)
    if aggregation != "soup":
        out = online_gate.unsqueeze(-1) * out
        ends = torch.tensor(list(lengths)).cumsum(0).tolist()
        for i, state in enumerate(cached):
            if aggregation == "ssc":
                out = out + _sparse_cached_read(state, qh, gates[..., i], ends[i])
            else:
                read = gates[:, :, ends[i] :, i, None] * network.forward(state, qh[:, :, ends[i] :])
                out = out + torch.nn.functional.pad(read, (0, 0, ends[i], 0))
    return ChunkResult(out.transpose(1, 2), weights, momentum, chunk_start, cached)


def _zero_momentum(initial: Sequence[torch.Tensor], memory: str) -> list[torch.Tensor] | None:
    return [torch.zeros_like(w) for w in initial] if memory == "titans" else None


def _online_read(
    query: torch.Tensor,
    weights: Sequence[torch.Tensor],
    momentum: Sequence[torch.Tensor] | None,
    inputs: Sequence[torch.Tensor],
    deltas: Sequence[torch.Tensor],
    coef: ChunkCoefficients,
) -> torch.Tensor:
    """``f_{theta_t}(q_t)`` for the chunk's tokens, ``[B, H, c, Dv]``."""
    a = query
    for l in range(len(weights)):
        z = online_layer(l, a, weights, momentum, inputs, deltas, coef)
        a = network.gelu(z) if l < len(weights) - 1 else z
    return a + query if len(weights) > 1 else a


def _soup_read(
    query: torch.Tensor,
    weights: Sequence[torch.Tensor],
    momentum: Sequence[torch.Tensor] | None,
    inputs: Sequence[torch.Tensor],
    deltas: Sequence[torch.Tensor],
    coef: ChunkCoefficients,
    stacked: Sequence[torch.Tensor],
    gates: torch.Tensor,
    online_gate: torch.Tensor,
) -> torch.Tensor:
    """``f_{theta*_t}(q_t)`` with ``theta*_t = g_{t,s} theta_t + sum_i g_{t,i} theta(i)``, layer by layer.

    ``stacked[l]`` is ``[B, H, d_in, N_c * d_out]`` (the cached ``W_l(i)^T`` side by side) and
    ``gates`` ``[B, H, c, N_c]``.
    """
    a = query
    n_cached = gates.shape[-1]
    for l in range(len(weights)):
        z = online_gate.unsqueeze(-1) * online_layer(l, a, weights, momentum, inputs, deltas, coef)
        if n_cached:
            per_state = (a @ stacked[l]).unflatten(-1, (n_cached, -1))  # [B, H, c, N_c, d_out]
            z = z + (gates.unsqueeze(-1) * per_state).sum(-2)
        a = network.gelu(z) if l < len(weights) - 1 else z
    return a + query if len(weights) > 1 else a


def _sparse_cached_read(
    state: Sequence[torch.Tensor], query: torch.Tensor, gate: torch.Tensor, end: int
) -> torch.Tensor:
    """``g_{t,i} f_i(q_t)`` for the tokens after ``end`` whose gate on this state is non-zero (ssc).

    Per (batch, head) the selecting tokens are packed to the front (stable sort), read with one
    batched forward of width ``max count``, and scattered back; padded slots contribute 0.
    """
    gate = gate[..., end:]  # [B, H, T']
    chosen = gate != 0
    counts = chosen.sum(-1)
    width = int(counts.max()) if counts.numel() else 0
    out = query.new_zeros(*query.shape[:-1], state[-1].shape[-2])
    if width == 0:
        return out
    order = torch.argsort((~chosen).to(torch.int8), dim=-1, stable=True)[..., :width]
    valid = torch.arange(width, device=query.device) < counts.unsqueeze(-1)
    picked = query[:, :, end:].gather(2, order.unsqueeze(-1).expand(-1, -1, -1, query.shape[-1]))
    weight = torch.where(valid, gate.gather(2, order), 0.0).unsqueeze(-1)
    read = torch.where(valid.unsqueeze(-1), weight * network.forward(state, picked), 0.0)
    index = (order + end).unsqueeze(-1).expand_as(read)
    return out.scatter_add(2, index, read)
