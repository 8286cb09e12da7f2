"""Decoding deep-memory MC with the Fenwick (log) segmentation (DESIGN.md §5); the prefill cache is built by
:func:`mcrnn.ops.deep.chunk.deep_fenwick_prefill`.

After ``L`` tokens the buckets are the binary digits of ``L`` (:func:`fenwick_buckets`); the last is
the online memory. A deep state is not additive, so two buckets cannot be merged by adding their
states: the cache keeps the weights of every bucket of the partition (snapshots, never changed) and
the **runs** of the chunked rule that later buckets will end in:

- ``checkpoint``: one run, the stream from token 0; a new online bucket's weights are the stream's.
- ``independent``: a bucket ``[s, e)`` is a run from the initial weights (zero momentum) started at
  ``s``. Token ``t`` lies in a future bucket of level ``l`` exactly when bit ``l`` of ``t`` is clear,
  the block starting at ``s_l = (t >> l) << l``; so the cache keeps one run per distinct ``s_l`` (at
  most ``log2(t) + 2``), each token writes into all of them, and the new online bucket ``[s, t + 1)``
  takes the weights of the run from ``s``.

Per decoded token: ``checkpoint`` one write and ``popcount(L)`` reads; ``independent`` up to
``log2(L) + 1`` writes (one MLP gradient each) and ``popcount(L)`` reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mcrnn.ops.cache import MemoryCache
from mcrnn.ops.deep.log_naive import read_buckets
from mcrnn.ops.deep.rule import Rates, write_step
from mcrnn.ops.read.fenwick import fenwick_buckets


@dataclass
class DeepFenwickCache(MemoryCache):
    """Recurrent state of one deep-memory stream with the log segmentation (batch-first, per-layer
    ``[B, H, d_out, d_in]``).

    Besides ``spec`` and ``position``: ``bucket_weights`` and ``bucket_key_sums`` ([B, H, Dk]) of every
    bucket of ``fenwick_buckets(position)`` (the last one online); ``run_starts`` the first token of each
    growing run, with its weights, momentum (titans, else ``None``) and the weights at the start of its
    current inner chunk (chunks counted from the run's start).
    """

    memory: str
    chunk_size: int
    bucket_weights: list[list[torch.Tensor]]
    bucket_key_sums: list[torch.Tensor]
    run_starts: list[int]
    run_weights: list[list[torch.Tensor]]
    run_momentum: list[list[torch.Tensor]] | None
    run_chunk_starts: list[list[torch.Tensor]]

    def shape_signature(self) -> tuple[int, int, int, int]:
        first, last = self.bucket_weights[0][0], self.bucket_weights[0][-1]
        return (first.shape[0], first.shape[1], first.shape[-1], last.shape[-2])


def run_starts(position: int, init: str) -> list[int]:
    """Starts of the runs the token at ``position`` writes into: ``[0]`` under ``checkpoint``, else the
    starts ``(position >> l) << l`` of the blocks with bit ``l`` of ``position`` clear (increasing)."""
    if init == "checkpoint":
        return [0]
    levels = range(position.bit_length() + 1)
    return sorted({position >> l << l for l in levels if not position >> l & 1})


def recurrent_deep_log(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor,
    *,
    cache: DeepFenwickCache,
    params: Sequence[torch.Tensor],
    rates: Rates,
) -> tuple[torch.Tensor, DeepFenwickCache]:
    """Continue ``cache`` over [B, T, H, D] inputs token by token; returns ``o`` [B, T, H, Dv] and a new
    cache (``cache`` itself is not modified)."""
    spec = cache.spec
    titans = cache.run_momentum is not None
    buckets, weights, key_sums = fenwick_buckets(cache.position), cache.bucket_weights, cache.bucket_key_sums
    momenta = cache.run_momentum or [None] * len(cache.run_starts)
    states = zip(cache.run_weights, momenta, cache.run_chunk_starts, strict=True)
    runs = dict(zip(cache.run_starts, states, strict=True))
    batch = q.shape[0]
    initial = [w.unsqueeze(0).expand(batch, *w.shape) for w in params]
    outputs = []
    position = cache.position
    for t in range(q.shape[1]):
        new_runs = {}
        for start in run_starts(position, spec.init):
            if start in runs:
                state, momentum, chunk_start = runs[start]
            else:  # a run opens at its first token
                state, momentum = initial, [torch.zeros_like(w) for w in initial] if titans else None
            if (position - start) % cache.chunk_size == 0:
                chunk_start = state
            state, momentum = write_step(
                cache.memory, state, momentum, chunk_start, k[:, t], v[:, t], rates.at(t)
            )
            new_runs[start] = (state, momentum, chunk_start)
        runs = new_runs
        position += 1
        new_buckets = fenwick_buckets(position)
        online_start = new_buckets[-1][0]
        index = {bucket: i for i, bucket in enumerate(buckets)}
        weights = [weights[index[b]] for b in new_buckets[:-1]] + [
            runs[online_start if spec.init == "independent" else 0][0]
        ]
        merged = sum((key_sums[i] for b, i in index.items() if b[0] >= online_start), k[:, t])
        key_sums = [key_sums[index[b]] for b in new_buckets[:-1]] + [merged]
        buckets = new_buckets
        sizes = [(end - start) if spec.pooling == "mean" else 1 for start, end in buckets]
        contexts = [s / n for s, n in zip(key_sums, sizes, strict=True)]
        outputs.append(read_buckets(weights, contexts, q[:, t], u[:, t], spec.aggregation, spec.top_k))
    starts = sorted(runs)
    new_cache = DeepFenwickCache(
        spec=spec,
        position=position,
        memory=cache.memory,
        chunk_size=cache.chunk_size,
        bucket_weights=weights,
        bucket_key_sums=key_sums,
        run_starts=starts,
        run_weights=[runs[s][0] for s in starts],
        run_momentum=[runs[s][1] for s in starts] if titans else None,
        run_chunk_starts=[runs[s][2] for s in starts],
    )
    return torch.stack(outputs, dim=1), new_cache
