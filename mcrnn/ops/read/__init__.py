"""The read side of Memory Caching, shared by every memory family (DESIGN.md §3-§5, §9).

"The update path is unchanged; only the read path changes": a family supplies its write rule, this
package does everything else.

- :mod:`.segments`: segment indices, router contexts (pooled keys), router gates and the aggregation
  weights (``mixing_weights``, the ``ssc`` selection);
- :mod:`.fenwick`: the Fenwick (log) buckets and levels of a prefix;
- :mod:`.reference`: the token-loop definitions of MC over any matrix write rule (``segment_loop``,
  ``fenwick_loop``, ``aggregate``);
- :mod:`.matrix`: the parallel reads of cached matrix states (dense, and ``ssc``'s selected read);
- :mod:`.log`: the parallel Fenwick read of matrix states over a write rule's chunks (``FenwickWrite``);
- :mod:`.matrix_cache`, :mod:`.fenwick_cache`: the decoding caches of the matrix memories and their
  one-token steps (the family passes the token's write and decay).

The deep memories (``dla``, ``titans``) share the router and the segments; their states are networks,
not matrices, so their reads live in :mod:`mcrnn.ops.deep`.
"""

from mcrnn.ops.read.fenwick_cache import FenwickMemoryCache
from mcrnn.ops.read.matrix_cache import MatrixMemoryCache

__all__ = ["FenwickMemoryCache", "MatrixMemoryCache"]
