"""Memory Caching over deep (MLP) memories: ``dla`` and ``titans`` (DESIGN.md §3-§6).

Per head the memory is ``f(x) = x + W_L gelu(... gelu(W_1 x))`` (:mod:`.network`); its inner rule
runs in chunks of ``chunk_size`` tokens counted from each segment's start, every gradient of a chunk
at the chunk-start weights ``theta_0``:

- ``dla``:    ``theta_t = a_t theta_{t-1} - eta_t grad(-<f(k_t), v_t>)(theta_0)``;
- ``titans``: ``S_t = b_t S_{t-1} - eta_t grad ||f(k_t) - v_t||^2 (theta_0)``,
  ``theta_t = a_t theta_{t-1} + S_t``.

Entry points (:mod:`.mc`): :func:`naive_deep_mc`, :func:`chunk_deep_mc`, :func:`recurrent_deep_mc`;
with ``segmentation="log"`` they run :mod:`.log_naive`, :mod:`.log_chunk` and :mod:`.log_recurrent`
(decoding from a :class:`DeepFenwickCache`).
"""

from mcrnn.ops.deep.log_recurrent import DeepFenwickCache
from mcrnn.ops.deep.mc import chunk_deep_mc, naive_deep_mc, recurrent_deep_mc
from mcrnn.ops.deep.network import layer_shapes
from mcrnn.ops.deep.recurrent import DeepMemoryCache

__all__ = [
    "DeepFenwickCache",
    "DeepMemoryCache",
    "chunk_deep_mc",
    "layer_shapes",
    "naive_deep_mc",
    "recurrent_deep_mc",
]
