"""MC over matrix memories (``linear``, ``swla``): one entry point over the three implementations."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mcrnn.ops.linear.chunk import cached_read, chunk_linear, selected_read
from mcrnn.ops.linear.recurrent import MatrixMemoryCache, recurrent_step
from mcrnn.ops.segments import router_gates, segment_contexts, segment_index


def heads_first(x: torch.Tensor) -> torch.Tensor:
    """[B, T, H, ...] -> [B, H, T, ...] (contiguous)."""
    return x.transpose(1, 2).contiguous()


def parallel_linear_mc(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor,
    lengths: Sequence[int],
    *,
    aggregation: str,
    init: str,
    top_k: int | None,
    pooling: str,
    memory: str,
    log_decay: torch.Tensor | None,
    prev_gate: torch.Tensor | None,
    cur_gate: torch.Tensor | None,
    output_cache: bool,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, MatrixMemoryCache | None]:
    """Parallel MC for [B, T, H, D] inputs: chunked online memory + gated reads of cached states.

    ``y_t = g_{t,s} q_t^T M_t + sum_{i < s} g_{t,i} q_t^T M(i)`` with the weights of
    :func:`~mcrnn.ops.segments.router_gates`. ``swla`` is linear in its two writes, so it runs the
    chunked kernel on ``(l_t k_t, v_t)`` and ``(b_t k_{t-1}, v_{t-1})`` with the same decay and sums.
    """
    seg = segment_index(lengths, q.device)
    contexts, online_context = segment_contexts(k, lengths, pooling)
    cached_gates, online_gate, selected = router_gates(u, contexts, online_context, seg, aggregation, top_k)
    qh = heads_first(q)
    decay_h = None if log_decay is None else log_decay.transpose(1, 2)
    online, states = 0, 0
    for write_k, write_v in _writes(k, v, memory, prev_gate, cur_gate, lengths, init):
        part_online, part_states = chunk_linear(
            qh, heads_first(write_k), heads_first(write_v), decay_h, lengths, init, chunk_size
        )
        online, states = online + part_online, states + part_states
    out = online * online_gate.transpose(1, 2).unsqueeze(-1)
    if len(lengths) > 1:
        gates_h = cached_gates.transpose(1, 2)
        if selected is None:
            out = out + cached_read(qh, gates_h.contiguous(), states, lengths)
        else:
            out = out + selected_read(qh, gates_h, selected.transpose(1, 2).contiguous(), states)
    out = out.transpose(1, 2)
    return out, _prefill_cache(states, contexts, k, v, lengths, memory) if output_cache else None


def triton_linear_mc(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor,
    lengths: Sequence[int],
    *,
    aggregation: str,
    init: str,
    top_k: int | None,
    pooling: str,
    memory: str,
    log_decay: torch.Tensor | None,
    prev_gate: torch.Tensor | None,
    cur_gate: torch.Tensor | None,
    output_cache: bool,
) -> tuple[torch.Tensor, MatrixMemoryCache | None]:
    """The same computation as :func:`parallel_linear_mc` on the Triton kernels ([B, T, H, D] layout,
    inputs in their own dtype; the kernels accumulate in float32). ``grm``/``soup`` use the read with
    the router softmax fused in; the other aggregations read with precomputed gates."""
    from mcrnn.ops.linear import triton as mc_triton

    online, states = 0, 0
    for write_k, write_v in _writes(k, v, memory, prev_gate, cur_gate, lengths, init):
        part_online, part_states = mc_triton.chunk_linear(q, write_k, write_v, log_decay, lengths, init)
        online, states = online + part_online, states + part_states
    contexts, online_context = segment_contexts(k, lengths, pooling)
    if len(lengths) == 1:
        out = online
    elif aggregation in ("grm", "soup"):
        online_logit = (u * online_context).sum(-1)
        out = mc_triton.grm_read(q, u, contexts, online, online_logit, states, lengths)
    else:
        seg = segment_index(lengths, q.device)
        cached, online_gate, selected = router_gates(u, contexts, online_context, seg, aggregation, top_k)
        out = online * online_gate.unsqueeze(-1).to(online.dtype)
        if selected is None:
            out = out + mc_triton.cached_read(q, cached.to(q.dtype), states, lengths)
        else:
            weights = cached.gather(-1, selected).to(q.dtype)
            out = out + mc_triton.ssc_read(q, selected, weights, states, lengths)
    cache = _prefill_cache(states.transpose(1, 2), contexts, k, v, lengths, memory) if output_cache else None
    return out, cache


def _writes(
    k: torch.Tensor,
    v: torch.Tensor,
    memory: str,
    prev_gate: torch.Tensor | None,
    cur_gate: torch.Tensor | None,
    lengths: Sequence[int],
    init: str,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The rank-one writes of a step as (key, value) streams [B, T, H, D] with a shared decay.

    ``linear``: ``k_t v_t^T``. ``swla`` is linear in its two writes: ``(l_t k_t, v_t)`` and
    ``(b_t k_{t-1}, v_{t-1})``, so MC over it is the sum of two runs of the linear kernel.
    """
    if memory == "linear":
        return [(k, v)]
    prev_k, prev_v = _previous_token(k, lengths, init), _previous_token(v, lengths, init)
    return [(k * cur_gate.unsqueeze(-1), v), (prev_k * prev_gate.unsqueeze(-1), prev_v)]


def _prefill_cache(
    states: torch.Tensor,
    contexts: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lengths: Sequence[int],
    memory: str,
) -> MatrixMemoryCache:
    """Decoding cache after a parallel pass: ``states`` [B, H, N, Dk, Dv] at segment ends, ``contexts``
    [B, N, H, Dk], ``k``/``v`` [B, T, H, D]. The last segment stays online (pushed lazily)."""
    last_start = sum(lengths[:-1])
    return MatrixMemoryCache(
        online=states[:, :, -1],
        cached=states[:, :, :-1],
        contexts=contexts[:, :-1],
        key_sum=k[:, last_start:].sum(1),
        segment_tokens=lengths[-1],
        position=sum(lengths),
        prev_key=k[:, -1] if memory == "swla" else None,
        prev_value=v[:, -1] if memory == "swla" else None,
    )


def _previous_token(x: torch.Tensor, lengths: Sequence[int], init: str) -> torch.Tensor:
    """``x_{t-1}`` along time of [B, T, H, D]; zero at t=0 and, for ``independent``, at segment starts."""
    shifted = torch.nn.functional.pad(x[:, :-1], (0, 0, 0, 0, 1, 0))
    if init == "independent" and len(lengths) > 1:
        starts = torch.tensor(list(lengths[:-1]), device=x.device).cumsum(0)
        shifted = shifted.index_fill(1, starts, 0.0)
    return shifted


def recurrent_linear_mc(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor,
    cache: MatrixMemoryCache,
    boundaries: set[int] | int | None,
    *,
    aggregation: str,
    init: str,
    top_k: int | None,
    pooling: str,
    memory: str,
    log_decay: torch.Tensor | None,
    prev_gate: torch.Tensor | None,
    cur_gate: torch.Tensor | None,
) -> tuple[torch.Tensor, MatrixMemoryCache]:
    """Decode [B, T, H, D] inputs token by token from ``cache`` (the generation path, not training).

    ``boundaries``: an int segment size (a segment starts where ``position % size == 0``), a set of
    absolute start positions, or None (one segment).
    """
    outputs = []
    for t in range(q.shape[1]):
        position = cache.position
        if isinstance(boundaries, int):
            starts_segment = position % boundaries == 0
        else:
            starts_segment = boundaries is not None and position in boundaries
        y, cache = recurrent_step(
            q[:, t],
            k[:, t],
            v[:, t],
            u[:, t],
            cache,
            starts_segment=starts_segment,
            aggregation=aggregation,
            init=init,
            top_k=top_k,
            pooling=pooling,
            memory=memory,
            decay=None if log_decay is None else log_decay[:, t].exp(),
            prev_gate=None if prev_gate is None else prev_gate[:, t],
            cur_gate=None if cur_gate is None else cur_gate[:, t],
        )
        outputs.append(y)
    return torch.stack(outputs, dim=1), cache
