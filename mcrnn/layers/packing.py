"""Packed documents (flash-linear-attention's ``cu_seqlens`` convention) for the token mixers.

A packed batch is ``x`` [1, T, C] holding documents back to back, with ``cu_seqlens`` [N + 1] their
cumulative lengths (``0 = cu_0 < cu_1 < ... < cu_N = T``). A mixer must let no state, cache, router
context or segment cross a boundary: :func:`run_documents` lays the documents out as rows of a
right-padded batch [N, max_len, C], runs the mixer's batched forward with the padding mask (exact for
real positions) and packs the outputs back.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def check_cu_seqlens(cu_seqlens: torch.Tensor, seq_len: int) -> list[int]:
    """Document lengths from ``cu_seqlens``; ``ValueError`` unless it is 1-D, integer, starts at 0, ends at
    ``seq_len`` and strictly increases."""
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.is_floating_point():
        raise ValueError(f"cu_seqlens must be a 1-D integer tensor [N + 1], got {cu_seqlens!r}")
    bounds = cu_seqlens.tolist()
    lengths = [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    if len(bounds) < 2 or bounds[0] != 0 or bounds[-1] != seq_len or min(lengths) < 1:
        raise ValueError(f"cu_seqlens must rise strictly from 0 to T={seq_len}, got {bounds}")
    return lengths


def run_documents(
    forward: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    x: torch.Tensor,
    cu_seqlens: torch.Tensor,
) -> torch.Tensor:
    """``forward(padded [N, L, C], mask [N, L] or None) -> [N, L, C']`` over the documents of ``x``
    [1, T, C]; returns [1, T, C'] (document ``i``'s outputs at its own positions)."""
    if x.dim() != 3 or x.shape[0] != 1:
        raise ValueError(f"packed documents need x of shape [1, T, C], got {tuple(x.shape)}")
    lengths = check_cu_seqlens(cu_seqlens, x.shape[1])
    docs = x[0].split(lengths)
    padded = torch.nn.utils.rnn.pad_sequence(docs, batch_first=True)
    longest = padded.shape[1]
    mask = None
    if min(lengths) < longest:
        mask = torch.arange(longest, device=x.device) < torch.tensor(lengths, device=x.device).unsqueeze(1)
    out = forward(padded, mask)
    return torch.cat([out[i, :n] for i, n in enumerate(lengths)]).unsqueeze(0)
