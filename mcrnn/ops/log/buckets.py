"""The Fenwick (binary-indexed) partition of a prefix, DESIGN.md §5."""

from __future__ import annotations


def fenwick_buckets(length: int) -> list[tuple[int, int]]:
    """``[start, end)`` buckets of a prefix of ``length`` tokens, largest first (37 -> 32, 4, 1)."""
    buckets, start = [], 0
    for level in reversed(range(length.bit_length())):
        if length >> level & 1:
            buckets.append((start, start + (1 << level)))
            start += 1 << level
    return buckets
