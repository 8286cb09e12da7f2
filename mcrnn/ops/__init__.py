"""Functional ops, [B, T, H, D] in and out."""

from mcrnn.ops.linear.recurrent import FenwickMemoryCache, MatrixMemoryCache
from mcrnn.ops.memory_caching import memory_caching

__all__ = ["FenwickMemoryCache", "MatrixMemoryCache", "memory_caching"]
