"""Memory Caching over the ``kda`` memory (Kimi Delta Attention: the delta rule with a decay per key
channel).

Per head, ``M'_t = Diag(exp(g_t)) M_{t-1}``, ``M_t = M'_t + b_t k_t (v_t - M'_t^T k_t)^T`` read
``q_t^T M_t`` (fla's ``g`` [Dk] finite and <= 0 and ``beta`` in [0, 1]; ``q`` is not scaled: fla's
default ``Dk ** -0.5`` is the caller's). Keys are expected L2-normalised (the layer normalises them).
The write rule only; the reads of cached states, routers and segments are the matrix memories'.

Three entry points of one signature shape, each returning ``(o, cache or None)``: :func:`naive_kda_mc`
(the token-loop definition), :func:`chunk_kda_mc` (the chunkwise UT transform in PyTorch) and
:func:`recurrent_kda_mc` (decoding from a :class:`~mcrnn.ops.linear.MatrixMemoryCache`).
"""

from mcrnn.ops.kda.chunk import chunk_kda_mc
from mcrnn.ops.kda.naive import naive_kda_mc
from mcrnn.ops.kda.recurrent import recurrent_kda_mc

__all__ = ["chunk_kda_mc", "naive_kda_mc", "recurrent_kda_mc"]
