"""Memory Caching over matrix memories (``linear``, ``swla``), DESIGN.md §3-§6.

Three entry points of one signature shape, each returning ``(o, cache or None)``:
:func:`naive_linear_mc` (the token-loop definition), :func:`chunk_linear_mc` (parallel PyTorch, or
the Triton kernels with ``backend="triton"``) and :func:`recurrent_linear_mc` (decoding from a
:class:`MatrixMemoryCache`).
"""

from mcrnn.ops.linear.naive import naive_linear_mc
from mcrnn.ops.linear.parallel import chunk_linear_mc
from mcrnn.ops.linear.recurrent import MatrixMemoryCache, recurrent_linear_mc

__all__ = ["MatrixMemoryCache", "chunk_linear_mc", "naive_linear_mc", "recurrent_linear_mc"]
