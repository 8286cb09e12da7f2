"""MC over matrix memories (``linear``, ``swla``), parallel form: the chunk op of the family.

:func:`chunk_linear_mc` runs the chunked online memory and the gated reads of the cached states on
PyTorch (:mod:`.chunk`) or on the Triton kernels (:mod:`.triton`, a backend of the same op).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mcrnn.ops.inputs import full_precision, to_compute_dtype
from mcrnn.ops.linear.chunk import cached_read, chunk_linear, selected_read
from mcrnn.ops.linear.recurrent import MatrixMemoryCache
from mcrnn.ops.segments import router_gates, segment_contexts, segment_index
from mcrnn.ops.spec import DEFAULT_CHUNK_SIZE, MCSpec


def chunk_linear_mc(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor | None = None,
    *,
    spec: MCSpec,
    memory: str = "linear",
    log_decay: torch.Tensor | None = None,
    prev_gate: torch.Tensor | None = None,
    cur_gate: torch.Tensor | None = None,
    output_cache: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    backend: str = "torch",
) -> tuple[torch.Tensor, MatrixMemoryCache | None]:
    """Parallel MC over a matrix memory (inputs as :func:`mcrnn.ops.memory_caching`, not re-checked).

    ``y_t = g_{t,s} q_t^T M_t + sum_{i < s} g_{t,i} q_t^T M(i)`` with the weights of
    :func:`~mcrnn.ops.segments.router_gates` and the segments of ``spec`` (not ``log``).

    Args:
        backend: ``torch`` (states accumulate in float32, float64 for float64 inputs) or ``triton``
            (the kernels, inputs in their own dtype, float32 accumulation).
        chunk_size: the largest inner chunk of the PyTorch path (it picks one dividing the segments).

    Returns: ``o`` [B, T, H, Dv] in ``q``'s dtype and, with ``output_cache``, the decoding cache.
    """
    lengths = spec.lengths(q.shape[1])
    gates = {"log_decay": log_decay, "prev_gate": prev_gate, "cur_gate": cur_gate}
    if backend == "triton":
        out, states = _triton_linear_mc(
            q, k, v, q if u is None else u, lengths, spec=spec, memory=memory, **gates
        )
    else:
        inputs, gates, _ = to_compute_dtype(q, k, v, u, gates)
        with full_precision(q.device):
            out, states = _torch_linear_mc(
                *inputs, lengths, spec=spec, memory=memory, **gates, chunk_size=chunk_size
            )
    cache = prefill_cache(spec, memory, states, k, v, lengths) if output_cache else None
    return out.to(q.dtype), cache


def heads_first(x: torch.Tensor) -> torch.Tensor:
    """[B, T, H, ...] -> [B, H, T, ...] (contiguous)."""
    return x.transpose(1, 2).contiguous()


def _torch_linear_mc(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor,
    lengths: Sequence[int],
    *,
    spec: MCSpec,
    memory: str,
    log_decay: torch.Tensor | None,
    prev_gate: torch.Tensor | None,
    cur_gate: torch.Tensor | None,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked online memory + gated reads of cached states: ``o`` [B, T, H, Dv] and the segment-end
    states [B, N, H, Dk, Dv]. ``swla`` is linear in its two writes, so it runs the chunked kernel on
    ``(l_t k_t, v_t)`` and ``(b_t k_{t-1}, v_{t-1})`` with the same decay and sums."""
    qh = heads_first(q)
    decay_h = None if log_decay is None else log_decay.transpose(1, 2)
    online, states = 0, 0
    for write_k, write_v in write_streams(k, v, memory, prev_gate, cur_gate, lengths, spec.init):
        part_online, part_states = chunk_linear(
            qh, heads_first(write_k), heads_first(write_v), decay_h, lengths, spec.init, chunk_size
        )
        online, states = online + part_online, states + part_states
    return mix_cached_reads(qh, u, k, online, states, lengths, spec), states.transpose(1, 2)


def mix_cached_reads(
    qh: torch.Tensor,
    u: torch.Tensor,
    k: torch.Tensor,
    online: torch.Tensor,
    states: torch.Tensor,
    lengths: Sequence[int],
    spec: MCSpec,
) -> torch.Tensor:
    """``y_t = g_{t,s} online_t + sum_{i < s} g_{t,i} q_t^T M(i)`` for any matrix memory, with the
    weights of :func:`~mcrnn.ops.segments.router_gates` (contexts pool ``k``).

    Args:
        qh: [B, H, T, Dk] queries (heads first); u, k: [B, T, H, Dk]; online: [B, H, T, Dv] the online
        reads ``q_t^T M_t``; states: [B, H, N, Dk, Dv] the states at segment ends.

    Returns: ``y`` [B, T, H, Dv].
    """
    seg = segment_index(lengths, qh.device)
    contexts, online_context = segment_contexts(k, lengths, spec.pooling)
    cached_gates, online_gate, selected = router_gates(
        u, contexts, online_context, seg, spec.aggregation, spec.top_k
    )
    out = online * online_gate.transpose(1, 2).unsqueeze(-1)
    if len(lengths) > 1:
        gates_h = cached_gates.transpose(1, 2)
        if selected is None or torch.compiler.is_compiling():  # compiled ssc: dense read, zero gates off R_t
            out = out + cached_read(qh, gates_h.contiguous(), states, lengths)
        else:
            out = out + selected_read(qh, gates_h, selected.transpose(1, 2).contiguous(), states)
    return out.transpose(1, 2)


def _triton_linear_mc(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor,
    lengths: Sequence[int],
    *,
    spec: MCSpec,
    memory: str,
    log_decay: torch.Tensor | None,
    prev_gate: torch.Tensor | None,
    cur_gate: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same computation as :func:`_torch_linear_mc` on the Triton kernels ([B, T, H, D] layout,
    inputs in their own dtype; the kernels accumulate in float32). ``grm``/``soup`` use the read with
    the router softmax fused in; the other aggregations read with precomputed gates."""
    from mcrnn.ops.linear import triton as mc_triton

    online, states = 0, 0
    for write_k, write_v in write_streams(k, v, memory, prev_gate, cur_gate, lengths, spec.init):
        part_online, part_states = mc_triton.chunk_linear(q, write_k, write_v, log_decay, lengths, spec.init)
        online, states = online + part_online, states + part_states
    contexts, online_context = segment_contexts(k, lengths, spec.pooling)
    if len(lengths) == 1:
        out = online
    elif spec.aggregation in ("grm", "soup"):
        online_logit = (u * online_context).sum(-1)
        out = mc_triton.grm_read(q, u, contexts, online, online_logit, states, lengths)
    else:
        seg = segment_index(lengths, q.device)
        cached, online_gate, selected = router_gates(
            u, contexts, online_context, seg, spec.aggregation, spec.top_k
        )
        out = online * online_gate.unsqueeze(-1).to(online.dtype)
        if selected is None:
            out = out + mc_triton.cached_read(q, cached.to(q.dtype), states, lengths)
        else:
            weights = cached.gather(-1, selected).to(q.dtype)
            out = out + mc_triton.ssc_read(q, selected, weights, states, lengths)
    return out, states


def write_streams(
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


def prefill_cache(
    spec: MCSpec,
    memory: str,
    states: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lengths: Sequence[int],
) -> MatrixMemoryCache:
    """Decoding cache of any matrix memory after a parallel pass: ``states`` [B, N, H, Dk, Dv] at segment
    ends, ``k``/``v`` [B, T, H, D] (``v`` is kept only for ``swla``). The last segment stays online
    (pushed to the cache lazily, by the next token)."""
    dtype = states.dtype
    k, v = k.to(dtype), v.to(dtype)
    contexts, _ = segment_contexts(k, lengths, spec.pooling)
    last_start = sum(lengths[:-1])
    return MatrixMemoryCache(
        spec=spec,
        position=sum(lengths),
        memory=memory,
        online=states[:, -1],
        cached=states[:, :-1],
        contexts=contexts[:, :-1],
        key_sum=k[:, last_start:].sum(1),
        segment_tokens=lengths[-1],
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
