"""Memory Caching over deep (MLP) memories: ``dla`` and ``titans`` (DESIGN.md §3-§6).

Per head the memory is ``f(x) = x + W_L gelu(... gelu(W_1 x))`` (:mod:`.network`); its inner rule
(:mod:`.rule`) runs in chunks of ``chunk_size`` tokens counted from each segment's start, every gradient of
a chunk at the chunk-start weights ``theta_0``:

- ``dla``:    ``theta_t = a_t theta_{t-1} - eta_t grad(-<f(k_t), v_t>)(theta_0)``;
- ``titans``: ``S_t = b_t S_{t-1} - eta_t grad ||f(k_t) - v_t||^2 (theta_0)``,
  ``theta_t = a_t theta_{t-1} + S_t``.

Three entry points of one signature shape, each for every segmentation, returning ``(o [B, T, H, Dv] in
q's dtype, cache or None)``:

- :func:`naive_deep_mc` (:mod:`.naive`): the definition, a loop over chunks and tokens (no cache);
- :func:`chunk_deep_mc` (:mod:`.chunk`): the chunk-parallel path, optionally with the decoding cache (its
  outputs come from the definition when an input holds a NaN/Inf, so that such a value never reaches
  earlier tokens);
- :func:`recurrent_deep_mc` (:mod:`.recurrent`): token-by-token decoding from a :class:`DeepMemoryCache`.

A deep state is not additive, so the log segmentation (DESIGN.md §5) has its own parts here, under the
same names: :mod:`.log_naive`, :mod:`.log_chunk` and :mod:`.log_recurrent` (the cache is then a
:class:`DeepFenwickCache`). The router, segments and Fenwick buckets are the shared :mod:`mcrnn.ops.read`.
"""

from mcrnn.ops.deep.chunk import chunk_deep_mc
from mcrnn.ops.deep.log_recurrent import DeepFenwickCache
from mcrnn.ops.deep.naive import naive_deep_mc
from mcrnn.ops.deep.network import layer_shapes
from mcrnn.ops.deep.recurrent import DeepMemoryCache, recurrent_deep_mc

__all__ = [
    "DeepFenwickCache",
    "DeepMemoryCache",
    "chunk_deep_mc",
    "layer_shapes",
    "naive_deep_mc",
    "recurrent_deep_mc",
]
