"""Functional Memory Caching ops, [B, T, H, D] in and out (the flash-linear-attention layout).

- :func:`memory_caching`: the documented entry over every family (validates once, dispatches);
- :class:`MCSpec`: the segmentation, aggregation, top-k, initialisation and pooling, validated once;
- per family, ``naive_*`` / ``chunk_*`` / ``recurrent_*`` entry points returning ``(o, cache or None)``:
  :mod:`mcrnn.ops.linear` (matrix memories), :mod:`mcrnn.ops.log` (log segmentation),
  :mod:`mcrnn.ops.deep` (MLP memories);
- :class:`MemoryCache`: the decoding-cache protocol (spec inside, ``[B, N, H, ...]``, ``reorder``).

Importing this package does not import ``transformers``.
"""

from mcrnn.ops.api import memory_caching
from mcrnn.ops.cache import MemoryCache
from mcrnn.ops.deep import DeepMemoryCache
from mcrnn.ops.linear import MatrixMemoryCache
from mcrnn.ops.log import FenwickMemoryCache
from mcrnn.ops.spec import MCSpec

__all__ = [
    "DeepMemoryCache",
    "FenwickMemoryCache",
    "MCSpec",
    "MatrixMemoryCache",
    "MemoryCache",
    "memory_caching",
]
