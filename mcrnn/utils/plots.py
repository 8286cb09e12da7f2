"""matplotlib plots saved atomically as PNG (matplotlib is imported only when a plot is drawn)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path


def plot_bars(
    path: str | Path, labels: Sequence[str], values: Sequence[float], *, title: str, ylabel: str
) -> None:
    """One bar per label, saved atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    bars = ax.bar(
        list(labels),
        list(values),
        color=["#888888", "#1f77b4", "#2ca02c", "#d62728", "#9467bd"][: len(labels)],
    )
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, max(1.0, max(values, default=0) * 1.15))
    fig.tight_layout()
    _save(fig, path)


def plot_lines(
    path: str | Path,
    series: Mapping[str, Mapping[int, float]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    log_x: bool = True,
) -> None:
    """One line per series over its x values (e.g. accuracy per context length), saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, points in series.items():
        xs = sorted(points)
        ax.plot(xs, [points[x] for x in xs], marker="o" if len(xs) < 20 else None, label=name)
    if log_x:
        ax.set_xscale("log", base=2)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path: str | Path) -> None:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
