"""Functional Memory Caching ops, [B, T, H, D] in and out (the flash-linear-attention layout).

- :func:`memory_caching`: the documented entry over every family (validates once, dispatches);
- :class:`MCSpec`: the segmentation, aggregation, top-k, initialisation and pooling, validated once;
- :mod:`mcrnn.ops.memories`: one dataclass per memory family with the inputs it takes (:class:`Linear`,
  :class:`SWLA`, :class:`DeltaNet`, :class:`GatedDeltaNet`, :class:`GLA`, :class:`KDA`, :class:`DLA`,
  :class:`Titans`);
- per family (one folder per write rule), ``naive_*`` / ``chunk_*`` / ``recurrent_*`` entry points returning
  ``(o, cache or None)``, each for every segmentation: :mod:`mcrnn.ops.linear` (``linear``, ``swla``),
  :mod:`mcrnn.ops.delta` (``deltanet``, ``gated_deltanet``), :mod:`mcrnn.ops.deep` (``dla``, ``titans``);
- :mod:`mcrnn.ops.read`: the read side every family shares (segments, Fenwick buckets, router, cached
  reads, the matrix caches and their decode steps);
- :class:`MemoryCache`: the decoding-cache protocol (spec inside, ``[B, N, H, ...]``, ``reorder``).

Importing this package does not import ``transformers``.
"""

from mcrnn.ops.api import memory_caching
from mcrnn.ops.cache import MemoryCache
from mcrnn.ops.deep import DeepMemoryCache
from mcrnn.ops.memories import DLA, GLA, KDA, SWLA, DeltaNet, GatedDeltaNet, Linear, Titans
from mcrnn.ops.read import FenwickMemoryCache, MatrixMemoryCache
from mcrnn.ops.spec import MCSpec

__all__ = [
    "DLA",
    "SWLA",
    "DeepMemoryCache",
    "DeltaNet",
    "FenwickMemoryCache",
    "GLA",
    "GatedDeltaNet",
    "KDA",
    "Linear",
    "MCSpec",
    "MatrixMemoryCache",
    "MemoryCache",
    "Titans",
    "memory_caching",
]
