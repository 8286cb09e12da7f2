"""The definition of deep-memory MC with the per-token Fenwick (log) segmentation: a loop over tokens.

Slow on purpose (DESIGN.md §5, "log" over a deep memory); the parallel path (:mod:`.log_chunk`) and
decoding (:mod:`.log_recurrent`) are tested against it in float64. One token's write and one read are
those of the constant-segment definition (:func:`mcrnn.ops.deep.naive.write_token`,
:func:`mcrnn.ops.deep.network.forward`).

The prefix of token ``t`` (length ``L = t + 1``) splits by the binary digits of ``L``, largest first
(``37 -> [0, 32), [32, 36), [36, 37)``); the last bucket holds ``t`` and is the online memory, the
others are cached. The memory of bucket ``[s, e)`` is ``theta_{e-1}`` of a run of the chunked rule:

- ``checkpoint``: the run of the whole stream from the initial weights (chunks counted from token 0),
  so a bucket's memory is the stream's weights after its last token and the online memory is the
  stream's ``theta_t``;
- ``independent``: a run from the initial weights with zero momentum over the bucket's tokens only,
  chunks counted from ``s`` (``s`` is a multiple of the bucket size, so for a power-of-two chunk these
  chunks are the stream's chunks cut to the bucket).

The router key of a bucket pools its keys (mean or sum); the aggregations are those of DESIGN.md §3
over the buckets (``soup`` mixes the buckets' weights per layer with the ``grm`` gates).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mcrnn.ops.deep import network
from mcrnn.ops.deep.rule import Rates, write_token
from mcrnn.ops.read.fenwick import fenwick_buckets
from mcrnn.ops.read.segments import mixing_weights
from mcrnn.ops.spec import MCSpec


def naive_deep_log_memory_caching(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor,
    *,
    spec: MCSpec,
    memory: str,
    params: Sequence[torch.Tensor],
    rates: Rates,
    chunk_size: int,
) -> torch.Tensor:
    """Reference output ``o`` [B, T, H, Dv] for validated [B, T, H, D] inputs (see module doc)."""
    batch, seq_len = q.shape[:2]
    initial = [w.unsqueeze(0).expand(batch, *w.shape) for w in params]
    runs: dict[int, list] = {}  # run start -> [weights after each token, weights, momentum, chunk start]

    def weights_after(origin: int, last: int) -> list[torch.Tensor]:
        """``theta_last`` of the run that starts at ``origin`` from the initial weights."""
        if origin not in runs:
            momentum = [torch.zeros_like(w) for w in initial] if memory == "titans" else None
            runs[origin] = [[], list(initial), momentum, None]
        states, weights, momentum, chunk_start = runs[origin]
        for t in range(origin + len(states), last + 1):
            if (t - origin) % chunk_size == 0:
                chunk_start = weights
            weights, momentum = write_token(
                memory, weights, momentum, chunk_start, k[:, t], v[:, t], rates.at(t)
            )
            states.append(weights)
        runs[origin][1:] = [weights, momentum, chunk_start]
        return states[last - origin]

    outputs = []
    for t in range(seq_len):
        buckets = fenwick_buckets(t + 1)
        states = [weights_after(0 if spec.init == "checkpoint" else start, end - 1) for start, end in buckets]
        sizes = [(end - start) if spec.pooling == "mean" else 1 for start, end in buckets]
        contexts = [k[:, start:end].sum(1) / size for (start, end), size in zip(buckets, sizes, strict=True)]
        outputs.append(read_buckets(states, contexts, q[:, t], u[:, t], spec.aggregation, spec.top_k))
    return torch.stack(outputs, dim=1)


def read_buckets(
    states: Sequence[Sequence[torch.Tensor]],
    contexts: Sequence[torch.Tensor],
    q: torch.Tensor,
    u: torch.Tensor,
    aggregation: str,
    top_k: int | None,
) -> torch.Tensor:
    """One token's aggregated read of its buckets (cached first, online last): ``states`` per bucket a list
    of ``[B, H, d_out, d_in]`` weights, ``contexts`` their pooled keys [B, H, Dk]; ``q, u`` [B, H, Dk].
    Returns [B, H, Dv]."""
    logits = torch.stack([(u * c).sum(-1) for c in contexts], -1).unsqueeze(1)  # [B, 1, H, n]
    visible = torch.ones_like(logits[..., :-1], dtype=torch.bool)
    cached_gates, online_gate, _ = mixing_weights(
        visible, lambda: (logits[..., :-1], logits[..., -1]), aggregation, top_k, q.dtype
    )
    gates = torch.cat([cached_gates, online_gate.unsqueeze(-1)], -1)[
        :, 0, :, :, None, None
    ]  # [B, H, n, 1, 1]
    query = q.unsqueeze(-2)  # [B, H, 1, Dk]
    if aggregation == "soup":
        depth = len(states[0])
        mixed = [sum(gates[:, :, i] * state[l] for i, state in enumerate(states)) for l in range(depth)]
        return network.forward(mixed, query).squeeze(-2)
    return sum(gates[:, :, i] * network.forward(state, query) for i, state in enumerate(states)).squeeze(-2)
