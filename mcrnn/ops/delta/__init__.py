"""Memory Caching over delta-rule memories (``deltanet``, ``gated_deltanet``), DESIGN.md §6.

Per head, ``M_t = a_t (I - b_t k_t k_t^T) M_{t-1} + b_t k_t v_t^T`` read ``q_t^T M_t`` (``a_t =
exp(log_decay_t)``, 1 for ``deltanet``; ``b_t = beta_t``). Keys are expected L2-normalised (the layer
normalises them): ``I - b_t k_t k_t^T`` is a contraction only while ``b_t |k_t|^2 <= 2``, beyond which
the recurrence itself (the definition, not just a fast path) grows without bound.

Three entry points of one signature shape, each returning ``(o, cache or None)``:
:func:`naive_delta_mc` (the token-loop definition), :func:`chunk_delta_mc` (the chunkwise WY / UT form
in PyTorch) and :func:`recurrent_delta_mc` (decoding), each for every segmentation (``log`` with
``init="checkpoint"``). The family holds only the write rule; the reads, router, segmentation and caches
are the shared read side, :mod:`mcrnn.ops.read`.
"""

from mcrnn.ops.delta.chunk import chunk_delta_mc
from mcrnn.ops.delta.naive import naive_delta_mc
from mcrnn.ops.delta.recurrent import recurrent_delta_mc

__all__ = ["chunk_delta_mc", "naive_delta_mc", "recurrent_delta_mc"]
