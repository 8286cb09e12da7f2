"""Memory Caching with the per-token Fenwick (log) segmentation, DESIGN.md §5 (``linear`` memory).

With ``grm`` this is the paper's Log-Linear++. Three entry points of one signature shape, each
returning ``(o, cache or None)``: :func:`naive_log_mc` (the token-loop definition),
:func:`chunk_log_mc` (parallel) and :func:`recurrent_log_mc` (decoding from a
:class:`FenwickMemoryCache`).
"""

from mcrnn.ops.log.buckets import fenwick_buckets
from mcrnn.ops.log.chunk import chunk_log_mc
from mcrnn.ops.log.naive import naive_log_mc
from mcrnn.ops.log.recurrent import FenwickMemoryCache, recurrent_log_mc

__all__ = ["FenwickMemoryCache", "chunk_log_mc", "fenwick_buckets", "naive_log_mc", "recurrent_log_mc"]
