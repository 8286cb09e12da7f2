"""What a run logs: ``metrics.jsonl`` (one JSON object per line; TensorBoard scalars too when it is
installed) and ``loss.png``, the training and evaluation loss against the step."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path


def read_metrics(path: Path) -> list[dict]:
    """The records of ``metrics.jsonl``; a torn last line (a write cut by a kill) is dropped with a
    warning naming the file, a bad line elsewhere is an error naming the file and line."""
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number < len(lines):
                raise ValueError(f"invalid JSON at {path}:{number} ({err})") from err
            print(f"warning: dropped the torn last line {number} of {path}: {line[:60]!r}", file=sys.stderr)
    return records


class MetricsWriter:
    """JSON lines in ``<out_dir>/metrics.jsonl`` (and TensorBoard scalars when it is installed)."""

    def __init__(self, out_dir: str | None, enabled: bool, resume_step: int) -> None:
        self.path = Path(out_dir) / "metrics.jsonl" if out_dir and enabled else None
        self.tb = None
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():  # drop lines past the step we resume from, so the log reads as one run
            kept = [record for record in read_metrics(self.path) if record["step"] <= resume_step]
            self.path.write_text("".join(json.dumps(record) + "\n" for record in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(out_dir) / "tensorboard"))
        except ImportError:
            self.tb = None

    def write(self, record: dict) -> None:
        if self.path is None:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def write_loss_plot(metrics_path: Path) -> Path | None:
    """``loss.png`` next to ``metrics.jsonl``: training (and evaluation) loss against the step.

    Skipped, with a note, when matplotlib is not installed; returns the plot's path or None.
    """
    if importlib.util.find_spec("matplotlib") is None:
        print(f"note: matplotlib is not installed; no loss plot next to {metrics_path}", file=sys.stderr)
        return None
    from mcrnn.utils.plots import plot_lines

    series: dict[str, dict[int, float]] = {"train loss": {}, "eval loss": {}}
    for record in read_metrics(metrics_path):
        for key, name in (("loss", "train loss"), ("eval_loss", "eval loss")):
            if isinstance(record.get(key), (int, float)):
                series[name][record["step"]] = record[key]
    path = metrics_path.with_name("loss.png")
    series = {name: points for name, points in series.items() if points}
    plot_lines(path, series, title="loss", xlabel="step", ylabel="loss", log_x=False)
    return path
