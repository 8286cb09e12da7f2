"""``memory_caching(q, k, v, u, ...)``: one documented entry over every memory family.

A thin dispatcher: it builds (or takes) the :class:`~mcrnn.ops.spec.MCSpec`, checks the inputs once,
and calls the family's entry point (:mod:`mcrnn.ops.linear`, :mod:`mcrnn.ops.delta`,
:mod:`mcrnn.ops.deep`): the naive definition, the parallel path (PyTorch or Triton), or the recurrent
step when a cache is passed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields

import torch

from mcrnn.ops.cache import MemoryCache
from mcrnn.ops.deep import DeepFenwickCache, DeepMemoryCache, chunk_deep_mc, naive_deep_mc, recurrent_deep_mc
from mcrnn.ops.deep.network import check_params
from mcrnn.ops.delta import chunk_delta_mc, naive_delta_mc, recurrent_delta_mc
from mcrnn.ops.gla import chunk_gla_mc, naive_gla_mc, recurrent_gla_mc
from mcrnn.ops.inputs import check_tensors, check_working_set
from mcrnn.ops.kda import chunk_kda_mc, naive_kda_mc, recurrent_kda_mc
from mcrnn.ops.linear import chunk_linear_mc, naive_linear_mc, recurrent_linear_mc
from mcrnn.ops.read import FenwickMemoryCache, MatrixMemoryCache
from mcrnn.ops.spec import (
    CHANNEL_DECAY_MEMORIES,
    DEEP_MEMORIES,
    DELTA_MEMORIES,
    MCSpec,
    check_choice,
    check_memory,
)

BACKENDS = ("auto", "naive", "torch", "triton")
#: the per-token tensors each memory family takes, besides q, k, v, u
FAMILY_INPUTS = {
    "linear": ("log_decay",),
    "swla": ("log_decay", "prev_gate", "cur_gate"),
    "deltanet": ("beta",),
    "gated_deltanet": ("log_decay", "beta"),
    "gla": ("log_decay",),
    "kda": ("log_decay", "beta"),
    "dla": ("params", "eta", "alpha", "mask"),
    "titans": ("params", "eta", "alpha", "beta", "mask"),
}
#: inputs a family cannot run without
REQUIRED_INPUTS = {"swla": ("prev_gate", "cur_gate"), "deltanet": ("beta",),
                   "gated_deltanet": ("log_decay", "beta"), "gla": ("log_decay",),
                   "kda": ("log_decay", "beta"), "dla": ("params", "eta", "alpha"),
                   "titans": ("params", "eta", "alpha", "beta")}  # fmt: skip
#: the entry points (naive, chunk, recurrent) of the memories with a decay per key channel
CHANNEL_DECAY_ENTRIES = {
    "gla": (naive_gla_mc, chunk_gla_mc, recurrent_gla_mc),
    "kda": (naive_kda_mc, chunk_kda_mc, recurrent_kda_mc),
}


def memory_caching(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor | None = None,
    *,
    spec: MCSpec | None = None,
    segment_size: int | None = None,
    segment_lengths: Sequence[int] | None = None,
    segmentation: str | None = None,
    aggregation: str | None = None,
    init: str | None = None,
    top_k: int | None = None,
    pooling: str | None = None,
    memory: str = "linear",
    log_decay: torch.Tensor | None = None,
    prev_gate: torch.Tensor | None = None,
    cur_gate: torch.Tensor | None = None,
    params: Sequence[torch.Tensor] | None = None,
    eta: torch.Tensor | None = None,
    alpha: torch.Tensor | None = None,
    beta: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    cache: MemoryCache | None = None,
    output_cache: bool = False,
    backend: str = "auto",
    chunk_size: int | None = None,
    check_inputs: bool = True,
) -> torch.Tensor | tuple[torch.Tensor, MemoryCache]:
    """Memory Caching (DESIGN.md §3-§6) over any memory family.

    Per head, token ``t`` in segment ``s`` with online state ``M_t`` and cached states ``M(i)``::

        residual: y_t = M_t(q_t) + sum_{i<s} M(i)(q_t)
        grm:      y_t = sum_{i<=s} g_{t,i} M(i)(q_t),  g_t = softmax_i <u_t, c_i>,  M(s) := M_t
        soup:     y_t = M_{theta*}(q_t),  theta* = sum_i g_{t,i} theta(i)   (== grm for matrix memories)
        ssc:      as grm over the top_k cached segments by <u_t, c_i> plus the online one
        average:  y_t = (1/s) sum_{i<=s} M(i)(q_t)

    ``M(q) = q^T M`` for the matrix memories, ``linear``: ``M_t = a_t M_{t-1} + k_t v_t^T``
    (``a_t = exp(log_decay_t)``, 1 if None) and ``swla``:
    ``M_t = a_t M_{t-1} + b_t k_{t-1} v_{t-1}^T + l_t k_t v_t^T`` (``b = prev_gate``, ``l = cur_gate``);
    the delta rule ``deltanet``/``gated_deltanet``: ``M_t = a_t (I - b_t k_t k_t^T) M_{t-1} + b_t k_t v_t^T``
    (``a_t = exp(log_decay_t)``, 1 for ``deltanet``; ``b = beta``); with a decay per key channel (fla's
    conventions; ``q`` is not scaled, fla's default ``Dk ** -0.5`` is the caller's) ``gla``:
    ``M_t = Diag(a_t) M_{t-1} + k_t v_t^T`` and ``kda``: ``M_t = M'_t + b_t k_t (v_t - M'^T_t k_t)^T`` with
    ``M'_t = Diag(a_t) M_{t-1}`` (``a_t = exp(log_decay_t)`` [Dk]);
    an MLP read for the deep memories ``dla``/``titans`` (see :mod:`mcrnn.ops.deep`). ``c_i`` pools
    segment i's keys (mean or sum); the online context pools the current segment's keys up to ``t``.

    Args:
        q, k: [B, T, H, Dk]; v: [B, T, H, Dv]; u: [B, T, H, Dk] router queries (None: ``u = q``);
            q, k, v, u share one floating dtype.
        spec: an :class:`MCSpec`, or its fields as keywords (``segment_size``, ``segment_lengths``,
            ``segmentation``, ``aggregation``, ``init``, ``top_k``, ``pooling``; None: the spec's
            default, i.e. one segment, ``grm``, ``checkpoint``, ``mean``), not both. With a ``cache``
            the spec is the cache's; keywords given must agree with it.
        memory: ``linear | swla | deltanet | gated_deltanet | gla | kda | dla | titans``.
        log_decay: [B, T, H] log of the decay ``a_t`` (finite, <= 0) or None (linear, swla; required
            for gated_deltanet); [B, T, H, Dk], one per key channel, for gla and kda (required).
        prev_gate, cur_gate: [B, T, H] the ``swla`` gates ``b_t, l_t`` in [0, 1].
        params, eta, alpha, beta: deep memories' initial weights (one [H, d_out, d_in] per layer, see
            :func:`mcrnn.ops.deep.layer_shapes`), step size >= 0, retention in [0, 1] and (Titans)
            momentum in [0, 1], each [B, T, H]; mask: [B, T] bool, the tokens that write (a masked
            token, e.g. padding, is an identity step: no write, retention or momentum change). For
            ``deltanet``/``gated_deltanet``/``kda`` ``beta`` [B, T, H] in [0, 1] is the writing strength
            ``b_t`` (required).
        cache: continue decoding from this cache (token by token, the recurrent form).
        output_cache: also return the cache after the last token.
        backend: ``auto`` (Triton on CUDA when it supports the inputs, else PyTorch), ``naive`` (the
            token-loop definition), ``torch`` (parallel PyTorch), ``triton`` (linear, swla).
        chunk_size: inner chunk; for matrix memories an upper bound the parallel path picks under
            (default 64), for deep memories the inner mini-batch ``b`` of the model (segments must be
            multiples of it; None: the largest power of two <= 64 dividing them; with
            ``segmentation="log"`` a power of two, None: 64).
        check_inputs: check shapes, dtypes and gate ranges (one host sync); callers whose inputs are
            valid by construction (the layer) pass False.

    Returns:
        ``o`` [B, T, H, Dv] in the dtype of ``q`` (states accumulate in float32, float64 for float64
        inputs), or ``(o, cache)`` with ``output_cache=True``.
    """
    spec = _resolve_spec(
        spec, cache, segment_size=segment_size, segment_lengths=segment_lengths, segmentation=segmentation,
        aggregation=aggregation, init=init, top_k=top_k, pooling=pooling,
    )  # fmt: skip
    check_choice("backend", backend, BACKENDS)
    inputs = {"log_decay": log_decay, "prev_gate": prev_gate, "cur_gate": cur_gate, "params": params,
              "eta": eta, "alpha": alpha, "beta": beta, "mask": mask}  # fmt: skip
    chunk = check_memory(spec, memory, chunk_size)
    if check_inputs:
        _check_family_inputs(memory, inputs)
        per_token = {name: inputs[name] for name in FAMILY_INPUTS[memory] if name not in ("params", "mask")}
        check_tensors(q, k, v, u, per_token, ("log_decay",) if memory in CHANNEL_DECAY_MEMORIES else ())
        if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != tuple(q.shape[:2])):
            raise ValueError(f"mask must be a bool [B, T]={tuple(q.shape[:2])} tensor or None")
        if params is not None:
            check_params(params, q.shape[2], q.shape[3], v.shape[-1])
        if backend == "triton" and (
            memory in DEEP_MEMORIES + DELTA_MEMORIES + CHANNEL_DECAY_MEMORIES or spec.kind == "log"
        ):
            raise ValueError(
                "backend='triton' runs the linear and swla memories with constant or explicit segments"
            )
        if cache is None and spec.kind in ("constant", "lengths") and memory not in DEEP_MEMORIES:
            check_working_set(len(spec.lengths(q.shape[1])), q, v)
    if cache is not None:
        _check_cache(cache, spec, memory, q, v)
        if (
            isinstance(cache, (DeepMemoryCache, DeepFenwickCache))
            and chunk_size is not None
            and chunk_size != cache.chunk_size
        ):
            raise ValueError(
                f"chunk_size={chunk_size} differs from the cache's inner chunk {cache.chunk_size}"
            )
    elif backend == "naive" and output_cache and memory in DEEP_MEMORIES:
        raise ValueError("backend='naive' has no cache for deep memories; use backend='auto' for decoding")
    gates = {name: inputs[name] for name in FAMILY_INPUTS[memory]}
    if memory in DEEP_MEMORIES:
        out, new_cache = _deep(q, k, v, u, spec, memory, gates, cache, output_cache, backend, chunk)
    elif memory in DELTA_MEMORIES:
        out, new_cache = _delta(q, k, v, u, spec, memory, gates, cache, output_cache, backend, chunk)
    elif memory in CHANNEL_DECAY_MEMORIES:
        out, new_cache = _channel(q, k, v, u, spec, memory, gates, cache, output_cache, backend, chunk)
    else:
        out, new_cache = _matrix(q, k, v, u, spec, memory, gates, cache, output_cache, backend, chunk)
    return (out, new_cache) if output_cache else out


def _resolve_spec(spec: MCSpec | None, cache: MemoryCache | None, **options: object) -> MCSpec:
    """The spec of a call: ``spec``, the keywords, or the cache's (which the others must agree with)."""
    given = {name: value for name, value in options.items() if value is not None}
    if spec is not None and given:
        raise ValueError(f"pass spec or the MC keywords {sorted(given)}, not both")
    if cache is None:
        return spec if spec is not None else MCSpec.from_options(**given)
    if not isinstance(cache, MemoryCache):
        raise TypeError(f"cache must be a cache returned by memory_caching, got {type(cache).__name__}")
    requested = spec.to_dict() if spec is not None else MCSpec.from_options(**given).to_dict()
    names = [f.name for f in fields(MCSpec)] if spec is not None else list(given)
    current = cache.spec.to_dict()
    conflicts = {name: (requested[name], current[name]) for name in names if requested[name] != current[name]}
    if conflicts:
        described = ", ".join(f"{name}={new!r} (cache: {old!r})" for name, (new, old) in conflicts.items())
        raise ValueError(
            f"the cache was built with another spec: {described}; decoding takes the cache's spec"
        )
    return cache.spec


def _check_family_inputs(memory: str, inputs: dict[str, object]) -> None:
    """Each family takes its own per-token inputs: a missing or foreign one is an error."""
    foreign = [
        name for name, value in inputs.items() if value is not None and name not in FAMILY_INPUTS[memory]
    ]
    if foreign:
        raise ValueError(f"memory={memory!r} takes {FAMILY_INPUTS[memory]}, not {foreign}")
    missing = [name for name in REQUIRED_INPUTS.get(memory, ()) if inputs[name] is None]
    if missing:
        raise ValueError(f"memory={memory!r} needs {missing}")


def _check_cache(cache: MemoryCache, spec: MCSpec, memory: str, q: torch.Tensor, v: torch.Tensor) -> None:
    """The cache must be of the family, memory and shapes of this call."""
    if memory in DEEP_MEMORIES:
        expected = DeepFenwickCache if spec.kind == "log" else DeepMemoryCache
    else:
        expected = FenwickMemoryCache if spec.kind == "log" else MatrixMemoryCache
    if not isinstance(cache, expected):
        raise TypeError(
            f"cache must be a {expected.__name__} for memory={memory!r}, got {type(cache).__name__}"
        )
    cache_memory = getattr(cache, "memory", memory)
    if cache_memory != memory:
        raise ValueError(f"the cache is for memory={cache_memory!r}, the call for memory={memory!r}")
    batch, _, heads, key_dim = q.shape
    cache.check_compatible(batch, heads, key_dim, v.shape[-1])


def _definition(naive, chunk, output_cache, *inputs, **options):  # noqa: ANN001, ANN002, ANN003, ANN202
    """The token-loop definition's output; with ``output_cache``, the decoding cache from the family's
    parallel path (the definitions keep none)."""
    out, _ = naive(*inputs, **options)
    return out, chunk(*inputs, **options, output_cache=True)[1] if output_cache else None


def _matrix(q, k, v, u, spec, memory, gates, cache, output_cache, backend, chunk):  # noqa: ANN001, ANN202
    if cache is not None:
        return recurrent_linear_mc(q, k, v, u, cache=cache, **gates)
    if backend == "naive":
        options = {"spec": spec, "memory": memory, **gates}
        return _definition(naive_linear_mc, chunk_linear_mc, output_cache, q, k, v, u, **options)
    fast = "triton" if _wants_triton(backend, q, k, v, u, *gates.values()) else "torch"
    return chunk_linear_mc(
        q,
        k,
        v,
        u,
        spec=spec,
        memory=memory,
        **gates,
        output_cache=output_cache,
        chunk_size=chunk,
        backend=fast,
    )


def _delta(q, k, v, u, spec, memory, gates, cache, output_cache, backend, chunk):  # noqa: ANN001, ANN202
    if cache is not None:
        return recurrent_delta_mc(q, k, v, u, cache=cache, **gates)
    if backend == "naive":
        options = {"spec": spec, "memory": memory, **gates}
        return _definition(naive_delta_mc, chunk_delta_mc, output_cache, q, k, v, u, **options)
    return chunk_delta_mc(
        q, k, v, u, spec=spec, memory=memory, **gates, output_cache=output_cache, chunk_size=chunk
    )


def _channel(q, k, v, u, spec, memory, gates, cache, output_cache, backend, chunk):  # noqa: ANN001, ANN202
    naive, parallel, recurrent = CHANNEL_DECAY_ENTRIES[memory]
    if cache is not None:
        return recurrent(q, k, v, u, cache=cache, **gates)
    if backend == "naive":
        return _definition(naive, parallel, output_cache, q, k, v, u, spec=spec, **gates)
    return parallel(q, k, v, u, spec=spec, **gates, output_cache=output_cache, chunk_size=chunk)


def _deep(q, k, v, u, spec, memory, gates, cache, output_cache, backend, chunk):  # noqa: ANN001, ANN202
    if cache is not None:
        return recurrent_deep_mc(q, k, v, u, cache=cache, **gates)
    if backend == "naive":
        return naive_deep_mc(q, k, v, u, spec=spec, memory=memory, **gates, chunk_size=chunk)
    return chunk_deep_mc(
        q, k, v, u, spec=spec, memory=memory, **gates, chunk_size=chunk, output_cache=output_cache
    )


def _wants_triton(backend: str, *tensors: torch.Tensor | None) -> bool:
    """Triton for ``backend="triton"``, or ``"auto"`` on CUDA tensors, when the kernels support the
    inputs (else the PyTorch path, with a one-time warning naming the reason)."""
    if backend not in ("auto", "triton") or (backend == "auto" and not tensors[0].is_cuda):
        return False
    from mcrnn.ops.linear import triton as mc_triton

    head_dims = (tensors[0].shape[-1], tensors[2].shape[-1])
    return mc_triton.use_triton(*tensors, head_dims=head_dims, requested=backend == "triton")
