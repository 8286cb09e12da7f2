"""Memory Caching over the matrix memories with additive writes (``linear``, ``swla``), DESIGN.md §3-§6.

Three entry points of one signature shape, each returning ``(o, cache or None)`` and each handling every
segmentation (constant, explicit, none, log): :func:`naive_linear_mc` (the token-loop definition),
:func:`chunk_linear_mc` (parallel PyTorch, or the Triton kernels with ``backend="triton"``) and
:func:`recurrent_linear_mc` (decoding from a :class:`~mcrnn.ops.read.MatrixMemoryCache` or
:class:`~mcrnn.ops.read.FenwickMemoryCache`). The family holds only the write rule; the reads, router,
segmentation and caches are the shared read side, :mod:`mcrnn.ops.read`.
"""

from mcrnn.ops.linear.chunk import chunk_linear_mc
from mcrnn.ops.linear.naive import naive_linear_mc
from mcrnn.ops.linear.recurrent import recurrent_linear_mc
from mcrnn.ops.read.matrix_cache import MatrixMemoryCache

__all__ = ["MatrixMemoryCache", "chunk_linear_mc", "naive_linear_mc", "recurrent_linear_mc"]
