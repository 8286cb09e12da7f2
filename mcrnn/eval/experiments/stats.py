"""Means and spreads over seeds, as the results page shows them."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """``(mean, sample standard deviation)``; the deviation is 0 for one value."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def by_group(results: Iterable[dict], key: Callable[[dict], object]) -> dict[object, list[dict]]:
    """Results grouped by ``key(result)``, in first-seen order."""
    groups: dict[object, list[dict]] = {}
    for result in results:
        groups.setdefault(key(result), []).append(result)
    return groups


def metric_stats(results: Sequence[dict], metric: Callable[[dict], float]) -> tuple[float, float, int]:
    """``(mean, std, seeds)`` of ``metric(result)`` over ``results`` (one per seed)."""
    mean, std = mean_std([metric(r) for r in results])
    return mean, std, len(results)


def cell(stats: tuple[float, float, int] | None, digits: int = 3) -> str:
    """``mean ± std (n)`` for a table cell; ``-`` when there is nothing."""
    if stats is None:
        return "-"
    mean, std, n = stats
    return f"{mean:.{digits}f} ± {std:.{digits}f} ({n})"
