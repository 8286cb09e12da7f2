"""``memory_caching(q, k, v, u, ...)``: one documented entry over every memory family.

A thin dispatcher: it builds (or takes) the :class:`~mcrnn.ops.spec.MCSpec`, checks the inputs once,
and calls the family's entry point (:mod:`mcrnn.ops.linear`, :mod:`mcrnn.ops.delta`,
:mod:`mcrnn.ops.deep`): the naive definition, the parallel path (PyTorch or Triton), or the recurrent
step when a cache is passed in.
"""

from __future__ import annotations

import warnings
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
from mcrnn.ops.memories import FAMILIES, MemoryInputs, memory_inputs
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
#: the keywords the families' inputs had before :mod:`mcrnn.ops.memories` (one release, with a warning)
DEPRECATED_INPUTS = ("log_decay", "prev_gate", "cur_gate", "params", "eta", "alpha", "beta", "mask")
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
    memory: str | MemoryInputs = "linear",
    spec: MCSpec | None = None,
    segment_size: int | None = None,
    segment_lengths: Sequence[int] | None = None,
    segmentation: str | None = None,
    aggregation: str | None = None,
    init: str | None = None,
    top_k: int | None = None,
    pooling: str | None = None,
    cache: MemoryCache | None = None,
    output_cache: bool = False,
    backend: str = "auto",
    chunk_size: int | None = None,
    check_inputs: bool = True,
    **deprecated: object,
) -> torch.Tensor | tuple[torch.Tensor, MemoryCache]:
    """Memory Caching (DESIGN.md §3-§6) over any memory family.

    Per head, token ``t`` in segment ``s`` with online state ``M_t`` and cached states ``M(i)``::

        residual: y_t = M_t(q_t) + sum_{i<s} M(i)(q_t)
        grm:      y_t = sum_{i<=s} g_{t,i} M(i)(q_t),  g_t = softmax_i <u_t, c_i>,  M(s) := M_t
        soup:     y_t = M_{theta*}(q_t),  theta* = sum_i g_{t,i} theta(i)   (== grm for matrix memories)
        ssc:      as grm over the top_k cached segments by <u_t, c_i> plus the online one
        average:  y_t = (1/s) sum_{i<=s} M(i)(q_t)

    ``M(q) = q^T M`` for the matrix memories (``linear``, ``swla``, ``deltanet``, ``gated_deltanet``, and
    with a decay per key channel ``gla``, ``kda``: fla's conventions, ``q`` is not scaled, fla's default
    ``Dk ** -0.5`` is the caller's), an MLP read for the deep memories (``dla``, ``titans``, see
    :mod:`mcrnn.ops.deep`); each family's update and inputs are in :mod:`mcrnn.ops.memories`. ``c_i`` pools
    segment i's keys (mean or sum); the online context pools the current segment's keys up to ``t``.

    Args:
        q, k: [B, T, H, Dk]; v: [B, T, H, Dv]; u: [B, T, H, Dk] router queries (None: ``u = q``);
            q, k, v, u share one floating dtype.
        memory: the family and its per-token inputs, one of :class:`~mcrnn.ops.memories.Linear`,
            :class:`~mcrnn.ops.memories.SWLA`, :class:`~mcrnn.ops.memories.DeltaNet`,
            :class:`~mcrnn.ops.memories.GatedDeltaNet`, :class:`~mcrnn.ops.memories.GLA`,
            :class:`~mcrnn.ops.memories.KDA`, :class:`~mcrnn.ops.memories.DLA`,
            :class:`~mcrnn.ops.memories.Titans`; or a family name for a family that needs no input
            (``"linear"``: linear attention without decay).
        spec: an :class:`MCSpec`, or its fields as keywords (``segment_size``, ``segment_lengths``,
            ``segmentation``, ``aggregation``, ``init``, ``top_k``, ``pooling``; None: the spec's
            default, i.e. one segment, ``grm``, ``checkpoint``, ``mean``), not both. With a ``cache``
            the spec is the cache's; keywords given must agree with it.
        cache: continue decoding from this cache (token by token, the recurrent form); checked once per
            call (:func:`check_cache`), never modified (a new cache is returned).
        output_cache: also return the cache after the last token.
        backend: ``auto`` (Triton on CUDA when it supports the inputs, else PyTorch), ``naive`` (the
            token-loop definition), ``torch`` (parallel PyTorch), ``triton`` (linear, swla).
        chunk_size: inner chunk; for matrix memories an upper bound the parallel path picks under
            (default 64), for deep memories the inner mini-batch ``b`` of the model (segments must be
            multiples of it; None: the largest power of two <= 64 dividing them; with
            ``segmentation="log"`` a power of two, None: 64).
        check_inputs: check shapes, dtypes and gate ranges (one host sync) and the cache
            (:func:`check_cache`); callers whose inputs are valid by construction (the layer, which checks
            its cache itself) pass False.
        deprecated: the family inputs as keywords (``log_decay=``, ``prev_gate=``, ``cur_gate=``,
            ``params=``, ``eta=``, ``alpha=``, ``beta=`` (Titans: its momentum), ``mask=``) with ``memory``
            a name: still accepted for one release, with a ``DeprecationWarning``.

    Returns:
        ``o`` [B, T, H, Dv] in the dtype of ``q`` (states accumulate in float32, float64 for float64
        inputs), or ``(o, cache)`` with ``output_cache=True``.

    Examples:
        >>> import torch
        >>> from mcrnn.ops import memory_caching
        >>> from mcrnn.ops.memories import GatedDeltaNet, Titans
        >>> from mcrnn.ops.deep import layer_shapes
        >>> B, T, H, D = 2, 64, 4, 16
        >>> q, k, v, u = (torch.randn(B, T, H, D) for _ in range(4))
        >>> k = torch.nn.functional.normalize(k, dim=-1)
        >>> memory_caching(q, k, v, u, segment_size=16).shape  # linear attention, GRM over 4 segments
        torch.Size([2, 64, 4, 16])
        >>> g, b = -0.1 * torch.rand(B, T, H), torch.rand(B, T, H)
        >>> o = memory_caching(q, k, v, u, memory=GatedDeltaNet(log_decay=g, beta=b), segment_size=16)
        >>> params = [0.1 * torch.randn(H, d_out, d_in) for d_out, d_in in layer_shapes(D, D, 2, 4)]
        >>> rates = {name: torch.rand(B, T, H) for name in ("eta", "alpha", "momentum")}
        >>> titans = Titans(params=params, **rates)
        >>> o = memory_caching(q, k, v, u, memory=titans, segment_size=16, aggregation="ssc", top_k=2)
        >>> o, cache = memory_caching(q, k, v, u, segment_size=16, output_cache=True)  # prefill
        >>> step = [x[:, :1] for x in (q, k, v, u)]  # then decode, the spec taken from the cache
        >>> o_next, cache = memory_caching(*step, cache=cache, output_cache=True)
    """
    spec = _resolve_spec(
        spec,
        cache,
        segment_size=segment_size,
        segment_lengths=segment_lengths,
        segmentation=segmentation,
        aggregation=aggregation,
        init=init,
        top_k=top_k,
        pooling=pooling,
    )
    check_choice("backend", backend, BACKENDS)
    memory = _memory_inputs(memory, deprecated)
    chunk = check_memory(spec, memory.name, chunk_size)
    if check_inputs:
        _check_inputs(q, k, v, u, memory, spec, backend, cache)
    if cache is not None and check_inputs:
        shape = (q.shape[0], q.shape[2], q.shape[3], v.shape[-1])
        check_cache(cache, spec, memory.name, shape, chunk_size)
    elif cache is None and backend == "naive" and output_cache and memory.name in DEEP_MEMORIES:
        raise ValueError("backend='naive' has no cache for deep memories; use backend='auto' for decoding")
    if memory.name in DEEP_MEMORIES:
        family = _deep
    elif memory.name in DELTA_MEMORIES:
        family = _delta
    else:
        family = _channel if memory.name in CHANNEL_DECAY_MEMORIES else _matrix
    out, new_cache = family(q, k, v, u, spec, memory, cache, output_cache, backend, chunk)
    return (out, new_cache) if output_cache else out


def _memory_inputs(memory: str | MemoryInputs, deprecated: dict[str, object]) -> MemoryInputs:
    """The family dataclass of a call: ``memory`` itself, or built from its name and the deprecated keywords
    (with a ``DeprecationWarning``)."""
    unknown = sorted(set(deprecated) - set(DEPRECATED_INPUTS))
    if unknown:
        raise TypeError(f"memory_caching() got unexpected keyword arguments {unknown}")
    given = {name: value for name, value in deprecated.items() if value is not None}
    if isinstance(memory, MemoryInputs):
        if given:
            raise ValueError(f"pass the inputs {sorted(given)} inside memory={type(memory).__name__}(...)")
        return memory
    if not isinstance(memory, str):
        raise TypeError(f"memory must be a family name or a mcrnn.ops.memories dataclass, got {memory!r}")
    if given:
        family = FAMILIES[memory].__name__ if memory in FAMILIES else "<Family>"
        warnings.warn(
            f"memory_caching's input keywords {sorted(given)} are deprecated and will be removed in the "
            f"next release: pass memory={family}(...) (mcrnn.ops.memories)",
            DeprecationWarning,
            stacklevel=3,
        )
        if memory == "titans":  # Titans' momentum was the keyword beta=
            if "beta" not in given:
                raise ValueError("memory='titans' needs ['momentum'] (the deprecated keyword beta=)")
            given["momentum"] = given.pop("beta")
    return memory_inputs(memory, **given)


def _check_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor | None,
    memory: MemoryInputs,
    spec: MCSpec,
    backend: str,
    cache: MemoryCache | None,
) -> None:
    """The data checks of a public call: shapes, dtypes, gate ranges (one host sync), the deep memories'
    weights and mask, the backend and the working set."""
    inputs = memory.tensors()
    mask, params = inputs.get("mask"), inputs.get("params")
    per_token = {name: x for name, x in inputs.items() if name not in ("params", "mask")}
    check_tensors(q, k, v, u, per_token, ("log_decay",) if memory.name in CHANNEL_DECAY_MEMORIES else ())
    if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != tuple(q.shape[:2])):
        raise ValueError(f"mask must be a bool [B, T]={tuple(q.shape[:2])} tensor or None")
    if params is not None:
        check_params(params, q.shape[2], q.shape[3], v.shape[-1])
    if backend == "triton" and (memory.name not in ("linear", "swla") or spec.kind == "log"):
        raise ValueError(
            "backend='triton' runs the linear and swla memories with constant or explicit segments"
        )
    if cache is None and spec.kind in ("constant", "lengths") and memory.name not in DEEP_MEMORIES:
        check_working_set(len(spec.lengths(q.shape[1])), q, v)


def _resolve_spec(spec: MCSpec | None, cache: MemoryCache | None, **options: object) -> MCSpec:
    """The spec of a call: ``spec``, the keywords, or the cache's (which the others must agree with)."""
    given = {name: value for name, value in options.items() if value is not None}
    if spec is not None and given:
        raise ValueError(f"pass spec or the MC keywords {sorted(given)}, not both")
    if cache is None:
        return spec if spec is not None else MCSpec.from_options(**given)
    if not isinstance(cache, MemoryCache):
        raise TypeError(f"cache must be a cache returned by memory_caching, got {type(cache).__name__}")
    if spec is cache.spec or (spec is None and not given):  # the layer passes the spec its cache holds
        return cache.spec
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


def check_cache(
    cache: MemoryCache,
    spec: MCSpec,
    memory: str,
    shape: tuple[int, int, int, int],
    chunk_size: int | None = None,
) -> None:
    """The one check of a cache passed in: of the family of ``memory`` and ``spec``, for that memory, for
    ``shape`` = (B, H, Dk, Dv) and (deep memories) the inner ``chunk_size`` if given. The layer runs it
    before touching the cache and calls the op with ``check_inputs=False``."""
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
    cache.check_compatible(*shape)
    if chunk_size is not None and chunk_size != getattr(cache, "chunk_size", chunk_size):
        raise ValueError(f"chunk_size={chunk_size} differs from the cache's inner chunk {cache.chunk_size}")


def _definition(naive, chunk, output_cache, *inputs, **options):  # noqa: ANN001, ANN002, ANN003, ANN202
    """The token-loop definition's output; with ``output_cache``, the decoding cache from the family's
    parallel path (the definitions keep none)."""
    out, _ = naive(*inputs, **options)
    return out, chunk(*inputs, **options, output_cache=True)[1] if output_cache else None


def _matrix(q, k, v, u, spec, memory, cache, output_cache, backend, chunk):  # noqa: ANN001, ANN202
    inputs = memory.tensors()
    if cache is not None:
        return recurrent_linear_mc(q, k, v, u, cache=cache, **inputs)
    options = {"spec": spec, "memory": memory.name, **inputs}
    if backend == "naive":
        return _definition(naive_linear_mc, chunk_linear_mc, output_cache, q, k, v, u, **options)
    fast = "triton" if _wants_triton(backend, q, k, v, u, *inputs.values()) else "torch"
    return chunk_linear_mc(q, k, v, u, **options, output_cache=output_cache, chunk_size=chunk, backend=fast)


def _delta(q, k, v, u, spec, memory, cache, output_cache, backend, chunk):  # noqa: ANN001, ANN202
    inputs = memory.tensors()
    if cache is not None:
        return recurrent_delta_mc(q, k, v, u, cache=cache, **inputs)
    options = {"spec": spec, "memory": memory.name, **inputs}
    if backend == "naive":
        return _definition(naive_delta_mc, chunk_delta_mc, output_cache, q, k, v, u, **options)
    return chunk_delta_mc(q, k, v, u, **options, output_cache=output_cache, chunk_size=chunk)


def _channel(q, k, v, u, spec, memory, cache, output_cache, backend, chunk):  # noqa: ANN001, ANN202
    naive, parallel, recurrent = CHANNEL_DECAY_ENTRIES[memory.name]
    inputs = memory.tensors()
    if cache is not None:
        return recurrent(q, k, v, u, cache=cache, **inputs)
    if backend == "naive":
        return _definition(naive, parallel, output_cache, q, k, v, u, spec=spec, **inputs)
    return parallel(q, k, v, u, spec=spec, **inputs, output_cache=output_cache, chunk_size=chunk)


def _deep(q, k, v, u, spec, memory, cache, output_cache, backend, chunk):  # noqa: ANN001, ANN202
    inputs = memory.tensors()
    if cache is not None:
        return recurrent_deep_mc(q, k, v, u, cache=cache, **inputs)
    options = {"spec": spec, "memory": memory.name, **inputs, "chunk_size": chunk}
    if backend == "naive":
        return naive_deep_mc(q, k, v, u, **options)
    return chunk_deep_mc(q, k, v, u, **options, output_cache=output_cache)


def _wants_triton(backend: str, *tensors: torch.Tensor | None) -> bool:
    """Triton for ``backend="triton"``, or ``"auto"`` on CUDA tensors, when the kernels support the
    inputs (else the PyTorch path, with a one-time warning naming the reason). ``backend="triton"`` on a
    device Triton cannot run on (the CPU without ``TRITON_INTERPRET=1``) is an error, not a fallback."""
    if backend not in ("auto", "triton") or (backend == "auto" and not tensors[0].is_cuda):
        return False
    from mcrnn.ops.linear import triton as mc_triton

    reason = mc_triton.device_reason(tensors[0].device) if backend == "triton" else None
    if reason is not None:
        raise ValueError(f"backend='triton' cannot run on {reason}; backend='auto' falls back to PyTorch")

    head_dims = (tensors[0].shape[-1], tensors[2].shape[-1])
    return mc_triton.use_triton(*tensors, head_dims=head_dims, requested=backend == "triton")
