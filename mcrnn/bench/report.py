"""Benchmark output: a text table with ratios, an atomically written JSON file, and a log-log plot."""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def ratio_table(rows: list[dict[str, Any]], baselines: tuple[str, ...]) -> str:
    """One line per (T, case): tokens/s, peak memory and the speed ratio to each baseline at that T."""
    by_len: dict[int, dict[str, dict[str, Any]]] = defaultdict(dict)
    for row in rows:
        by_len[row["seq_len"]][row["name"]] = row
    header = f"{'T':>6}  {'case':<16}{'tokens/s':>12}{'median ms':>11}{'peak MiB':>10}"
    widths = [max(12, len(b) + 4) for b in baselines]  # a long baseline name keeps its column apart
    header += "".join(f"{'x ' + b:>{w}}" for b, w in zip(baselines, widths, strict=True))
    lines = [header, "-" * len(header)]
    for seq_len in sorted(by_len):
        for name, row in by_len[seq_len].items():
            if "error" in row:
                lines.append(f"{seq_len:>6}  {name:<16}  error: {row['error']}")
                continue
            line = f"{seq_len:>6}  {name:<16}{row['tokens_per_s']:>12.0f}{row['median_s'] * 1e3:>11.1f}"
            line += f"{row['peak_mib']:>10.0f}"
            for base, width in zip(baselines, widths, strict=True):
                other = by_len[seq_len].get(base)
                ok = other is not None and "error" not in other
                ratio = f"{row['tokens_per_s'] / other['tokens_per_s']:.2f}" if ok else "-"
                line += f"{ratio:>{width}}"
            lines.append(line)
    return "\n".join(lines)


def plot_throughput(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Tokens/s against T on log axes, one line per case name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for row in rows:
        if "error" not in row:
            series[row["name"]].append((row["seq_len"], row["tokens_per_s"]))
    fig, axis = plt.subplots(figsize=(7, 4.5))
    for name, points in sorted(series.items()):
        points.sort()
        axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    axis.set_xscale("log", base=2)
    axis.set_yscale("log")
    axis.set_xlabel("sequence length T")
    axis.set_ylabel("tokens / s (forward + backward)")
    axis.set_title(title)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8)
    fig.tight_layout()
    temp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(temp, dpi=120)
    plt.close(fig)
    os.replace(temp, path)


def save_json(path: Path, payload: dict[str, Any]) -> None:
    write_atomic(path, (json.dumps(payload, indent=2) + "\n").encode())
