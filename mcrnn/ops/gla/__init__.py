"""Memory Caching over the ``gla`` memory (gated linear attention with a decay per key channel).

Per head, ``M_t = Diag(exp(g_t)) M_{t-1} + k_t v_t^T`` read ``q_t^T M_t`` (fla's ``gk``, ``g_t`` [Dk]
finite and <= 0; ``q`` is not scaled: fla's default ``Dk ** -0.5`` is the caller's). The write rule
only; the reads of cached states, routers and segments are the matrix memories'.

Three entry points of one signature shape, each returning ``(o, cache or None)``: :func:`naive_gla_mc`
(the token-loop definition), :func:`chunk_gla_mc` (chunkwise PyTorch) and :func:`recurrent_gla_mc`
(decoding from a :class:`~mcrnn.ops.linear.MatrixMemoryCache`).
"""

from mcrnn.ops.gla.chunk import chunk_gla_mc
from mcrnn.ops.gla.naive import naive_gla_mc
from mcrnn.ops.gla.recurrent import recurrent_gla_mc

__all__ = ["chunk_gla_mc", "naive_gla_mc", "recurrent_gla_mc"]
