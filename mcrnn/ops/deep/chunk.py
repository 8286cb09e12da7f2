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

Schedule: the coefficients of every chunk are formed at once; the sequential part, each chunk's key
gradients and end state, runs in :func:`mcrnn.ops.deep.scan.chunk_scan` (no autograd graph, a
hand-written backward); the reads need nothing but each chunk's start state and gradient factors, so
they run afterwards, batched over groups of ``READ_GROUP`` chunks. The sequence is padded to whole
chunks (only the final chunk can be partial; its padding has ``eta = 0``, comes after every real
token, and its end state is taken at the last real token).

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
from mcrnn.ops.deep.scan import ChunkEnd, add_matmul, chunk_scan
from mcrnn.ops.segments import router_gates, segment_contexts, segment_index

#: chunks whose online reads are batched into one set of matmuls (bounded for cache locality)
READ_GROUP = 32


@dataclass
class ChunkCoefficients:
    """Sums of the unrolled rule for every chunk: ``[n, B, H, c]`` per token, ``[n, B, H, c, c]`` pairs."""

    retain: torch.Tensor  # A_t
    carry: torch.Tensor | None  # P_t (titans)
    mix: torch.Tensor  # M_{ti} eta_i


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
    eta: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor | None, last: torch.Tensor
) -> tuple[ChunkCoefficients, ChunkEnd]:
    """Coefficients for gates ``[n, B, H, c]`` (see the module docstring) and each chunk's end.

    ``last`` [n] is the index of each chunk's last real token (``c - 1`` but in a padded final chunk).
    """
    log_a = torch.cumsum(safe_log(alpha), dim=-1)
    decay_a = decay_matrix(log_a)
    retain = torch.exp(log_a)
    carry = decay_b = None
    if beta is None:
        mix = decay_a * eta.unsqueeze(-2)
    else:
        log_b = torch.cumsum(safe_log(beta), dim=-1)
        decay_b = decay_matrix(log_b)
        carry = (decay_a @ torch.exp(log_b).unsqueeze(-1)).squeeze(-1)
        mix = (decay_a @ decay_b) * eta.unsqueeze(-2)
    pick = last.view(-1, 1, 1, 1).expand(*eta.shape[:-1], 1)

    def at(x: torch.Tensor) -> torch.Tensor:  # [n, B, H, c] -> [n, B, H] at each chunk's end
        return x.gather(-1, pick).squeeze(-1)

    def row(x: torch.Tensor) -> torch.Tensor:  # [n, B, H, c, c] -> [n, B, H, c], row ``last``
        return x.gather(-2, pick.unsqueeze(-1).expand(*x.shape[:-2], 1, x.shape[-1])).squeeze(-2)

    if beta is None:
        return ChunkCoefficients(retain, None, mix), ChunkEnd(at(retain), row(mix))
    end = ChunkEnd(at(retain), row(mix), at(carry), at(torch.exp(log_b)), row(decay_b * eta.unsqueeze(-2)))
    return ChunkCoefficients(retain, carry, mix), end


def online_layer(
    layer: int,
    x: torch.Tensor,
    weights: Sequence[torch.Tensor],
    momentum: Sequence[torch.Tensor] | None,
    inputs: Sequence[torch.Tensor],
    deltas: Sequence[torch.Tensor],
    coef: ChunkCoefficients,
) -> torch.Tensor:
    """``W_{l,t} x_t`` for every token of the chunk, ``x`` [..., c, d_in] -> [..., c, d_out].

    ``A_t`` scales whichever side of the first matmul is narrower; the other two terms accumulate
    into it inside the matmul (``baddbmm``).
    """
    weight = weights[layer]
    if x.shape[-1] <= weight.shape[-2]:
        out = (coef.retain.unsqueeze(-1) * x) @ weight.transpose(-1, -2)
    else:
        out = coef.retain.unsqueeze(-1) * (x @ weight.transpose(-1, -2))
    if momentum is not None:
        out = add_matmul(out, coef.carry.unsqueeze(-1) * x, momentum[layer].transpose(-1, -2))
    scores = (x @ inputs[layer].transpose(-1, -2)) * coef.mix
    return add_matmul(out, scores, deltas[layer], alpha=-1.0)


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
    batch, seq_len = q.shape[:2]
    if len(lengths) == 1:  # one segment: every aggregation reads the online memory alone, weight 1
        aggregation, gates, online_gate = "base", None, None
    else:
        seg = segment_index(lengths, q.device)
        contexts, online_context = segment_contexts(k, lengths, pooling)
        gates, online_gate, _ = router_gates(u, contexts, online_context, seg, aggregation, top_k)
    # chunk-major, padded to whole chunks: [n, B, H, c, ...]. Only the final chunk can
    # be partial (segments are multiples of chunk_size but the last); its padding has eta = 0 and comes
    # after every real token, and its end state is read at the last real token, so it changes nothing.
    n_chunks = -(-seq_len // chunk_size)
    pad = n_chunks * chunk_size - seq_len
    qc, kc, vc, eta_c = (_chunked(x, pad, chunk_size, 0.0) for x in (q, k, v, eta))
    alpha_c = _chunked(alpha, pad, chunk_size, 1.0)
    beta_c = _chunked(beta, pad, chunk_size, 1.0) if beta is not None else None
    last = torch.full((n_chunks,), chunk_size - 1, device=q.device)
    last[-1] = (seq_len - 1) % chunk_size
    coef, ends = chunk_coefficients(eta_c, alpha_c, beta_c, last)
    chunk_counts = [-(-n // chunk_size) for n in lengths]
    first_chunks = torch.tensor([0, *chunk_counts]).cumsum(0).tolist()[:-1]  # first chunk of each segment
    resets = [j == 0 or (init == "independent" and j in first_chunks) for j in range(n_chunks)]
    initial = [w.unsqueeze(0).expand(batch, *w.shape) for w in params]
    scan = chunk_scan(memory, initial, kc, vc, ends, resets)
    starts_w, starts_m = scan.starts(resets)
    cached = [[w[first] for w in scan.weights] for first in first_chunks[1:]]
    # reads: consecutive chunks of one segment batched in groups of READ_GROUP (cache-sized tensors)
    groups = [
        (s, min(READ_GROUP, n - lo)) for s, n in enumerate(chunk_counts) for lo in range(0, n, READ_GROUP)
    ]
    sizes = [count for _, count in groups]

    def split(tensors: Sequence[torch.Tensor] | None) -> list[list[torch.Tensor] | None]:
        if tensors is None:
            return [None] * len(groups)
        return [list(part) for part in zip(*(torch.split(x, sizes) for x in tensors), strict=True)]

    group_w, group_m = split(starts_w), split(starts_m)
    group_a, group_d = split(scan.inputs), split(scan.deltas)
    group_q, group_coef = torch.split(qc, sizes), _split_coefficients(coef, sizes)
    if aggregation == "soup":
        group_gates = [torch.split(_chunked(x, pad, chunk_size, 0.0), sizes) for x in (gates, online_gate)]
        # the cached W_l(i)^T side by side, per segment: [1, B, H, d_in, s * d_out]
        stacked = [
            [torch.cat([state[l].transpose(-1, -2) for state in cached[:s]], -1).unsqueeze(0) if s else None
             for l in range(len(params))]
            for s in range(len(lengths))
        ]  # fmt: skip
    online_reads = []
    for g, (s, _) in enumerate(groups):
        fields = (group_q[g], group_w[g], group_m[g], group_a[g], group_d[g], group_coef[g])
        if aggregation == "soup":
            g_cached, g_online = group_gates[0][g][..., :s], group_gates[1][g]
            online_reads.append(_soup_read(*fields, stacked[s], g_cached, g_online))
        else:
            online_reads.append(_online_read(*fields))
    out = torch.cat(online_reads).permute(1, 2, 0, 3, 4).flatten(2, 3)[:, :, :seq_len]  # [B, H, T, Dv]
    if aggregation not in ("soup", "base"):
        out = _add_cached_reads(out, q, gates, online_gate, cached, lengths, aggregation)
    return ChunkResult(
        out.transpose(1, 2),
        [w[-1] for w in scan.weights],
        None if scan.momentum is None else [m[-1] for m in scan.momentum],
        [w[-1] for w in starts_w],
        cached,
    )


def _add_cached_reads(
    out: torch.Tensor,
    q: torch.Tensor,
    gates: torch.Tensor,
    online_gate: torch.Tensor,
    cached: Sequence[Sequence[torch.Tensor]],
    lengths: Sequence[int],
    aggregation: str,
) -> torch.Tensor:
    """``g_{t,s} out_t + sum_{i<s} g_{t,i} f_i(q_t)``; ``out`` [B, H, T, Dv], ``gates`` [B, T, H, N]."""
    gates, online_gate = gates.transpose(1, 2), online_gate.transpose(1, 2)  # [B, H, T, N], [B, H, T]
    qh = q.transpose(1, 2)
    out = online_gate.unsqueeze(-1) * out
    bounds = torch.tensor(list(lengths)).cumsum(0).tolist()
    for i, state in enumerate(cached):
        if aggregation == "ssc":
            out = out + _sparse_cached_read(state, qh, gates[..., i], bounds[i])
        else:
            read = gates[:, :, bounds[i] :, i, None] * network.forward(state, qh[:, :, bounds[i] :])
            out = out + torch.nn.functional.pad(read, (0, 0, bounds[i], 0))
    return out


def _chunked(x: torch.Tensor, pad: int, chunk_size: int, value: float) -> torch.Tensor:
    """``[B, T, H, ...]`` -> chunk-major ``[n, B, H, c, ...]``, padding ``T`` with ``value`` to whole chunks."""
    if pad:
        widths = [0, 0] * (x.dim() - 2) + [0, pad]
        x = torch.nn.functional.pad(x, widths, value=value)
    x = x.unflatten(1, (-1, chunk_size))  # [B, n, c, H, ...]
    return x.permute(1, 0, 3, 2, *range(4, x.dim())).contiguous()


def _split_coefficients(coef: ChunkCoefficients, counts: Sequence[int]) -> list[ChunkCoefficients]:
    """Per-segment views (split along the chunk dim) of the batched coefficients."""
    parts = [
        torch.split(x, list(counts)) if x is not None else [None] * len(counts)
        for x in (coef.retain, coef.carry, coef.mix)
    ]
    return [ChunkCoefficients(*fields) for fields in zip(*parts, strict=True)]


def _online_read(
    query: torch.Tensor,
    weights: Sequence[torch.Tensor],
    momentum: Sequence[torch.Tensor] | None,
    inputs: Sequence[torch.Tensor],
    deltas: Sequence[torch.Tensor],
    coef: ChunkCoefficients,
) -> torch.Tensor:
    """``f_{theta_t}(q_t)`` for every token of ``n`` chunks, ``[n, B, H, c, Dk] -> [n, B, H, c, Dv]``."""
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

    ``stacked[l]`` is ``[1, B, H, d_in, N_c * d_out]`` (the cached ``W_l(i)^T`` side by side), ``query``
    ``[n, B, H, c, Dk]``, ``gates`` ``[n, B, H, c, N_c]`` and ``online_gate`` ``[n, B, H, c]``.
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
