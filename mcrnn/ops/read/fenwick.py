"""The Fenwick (binary-indexed) partition of a prefix, DESIGN.md §5: buckets, levels, inner chunk."""

from __future__ import annotations

import torch


def fenwick_buckets(length: int) -> list[tuple[int, int]]:
    """``[start, end)`` buckets of a prefix of ``length`` tokens, largest first (37 -> 32, 4, 1)."""
    buckets, start = [], 0
    for level in reversed(range(length.bit_length())):
        if length >> level & 1:
            buckets.append((start, start + (1 << level)))
            start += 1 << level
    return buckets


def fenwick_levels(seq_len: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Per token and level: ``active`` [T, n] (bit set), ``start``/``end`` [T, n] of its bucket, and the
    online level ``low`` [T] (the lowest set bit of ``L = t + 1``)."""
    length = torch.arange(1, seq_len + 1, device=device)
    levels = torch.arange(max(seq_len.bit_length(), 1), device=device)
    active = (length.unsqueeze(1) >> levels) & 1 == 1
    start = (length.unsqueeze(1) >> (levels + 1)) << (levels + 1)
    low = (length & -length).log2().round().long()
    return active, start, start + (1 << levels), low


def fenwick_chunk(chunk_size: int, seq_len: int) -> int:
    """The inner chunk of a parallel Fenwick pass: the largest power of two <= ``chunk_size``, at most the
    power of two covering ``seq_len`` (so that chunks tile the aligned buckets)."""
    return min(1 << (chunk_size.bit_length() - 1), 1 << (seq_len - 1).bit_length())
