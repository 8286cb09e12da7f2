"""The runner shared by the experiments: runs, their result files, the models, training, machine facts.

A *run* is one ``(experiment, model, size, seed)``; its result is ``<out>/<experiment>/<key>.json``
(written atomically: the run's fields, metrics, settings, wall time, machine, command and the git commit
of the code that ran it), and a run whose file exists is skipped, so an interrupted experiment resumes
where it stopped. A run that raises is reported and recorded in ``<out>/<experiment>/failed/<key>.json``
(removed once it succeeds); the other runs go on.

The run key is ``<model>__<size>__seed<seed>``, with ``size = <label>.<hash>``: the label says the
swept size (``w32``), the hash is of every setting of the experiment (steps, lengths, ...), so a run at
other settings never reuses a result.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import torch

from mcrnn.eval.report import write_json

#: model name -> (label in tables, MCConfig fields besides the sizes; ``segment`` stands for the segment size)
MODELS: dict[str, tuple[str, dict]] = {
    "base": ("linear (base RNN)", {"memory": "linear", "segment_size": None}),
    "grm": ("linear + GRM", {"memory": "linear", "aggregation": "grm", "segment_size": "segment"}),
    "ssc": (
        "linear + SSC (top-2)",
        {"memory": "linear", "aggregation": "ssc", "ssc_top_k": 2, "segment_size": "segment"},
    ),
    "log": ("linear Log-Linear++", {"memory": "linear", "aggregation": "grm", "segmentation": "log"}),
    "gdn-base": ("gated DeltaNet (base RNN)", {"memory": "gated_deltanet", "segment_size": None}),
    "gdn-grm": (
        "gated DeltaNet + GRM",
        {"memory": "gated_deltanet", "aggregation": "grm", "segment_size": "segment"},
    ),
    "gdn-ssc": (
        "gated DeltaNet + SSC (top-2)",
        {"memory": "gated_deltanet", "aggregation": "ssc", "ssc_top_k": 2, "segment_size": "segment"},
    ),
    "dla-base": ("DLA (base RNN)", {"memory": "dla", "segment_size": None, "chunk_size": "segment"}),
    "dla-grm": (
        "DLA + GRM",
        {"memory": "dla", "aggregation": "grm", "segment_size": "segment", "chunk_size": "segment"},
    ),
    "dla-soup": (
        "DLA + Soup",
        {"memory": "dla", "aggregation": "soup", "segment_size": "segment", "chunk_size": "segment"},
    ),
    "dla-ssc": (
        "DLA + SSC (top-2)",
        {
            "memory": "dla",
            "aggregation": "ssc",
            "ssc_top_k": 2,
            "segment_size": "segment",
            "chunk_size": "segment",
        },
    ),
    "dla-log": ("DLA Log-Linear++", {"memory": "dla", "aggregation": "grm", "segmentation": "log"}),
    "transformer": ("Transformer++", {"mixer": "attention"}),
    "transformer-conv": ("Transformer++ + short conv", {"mixer": "attention", "attention_conv_size": 4}),
}


@dataclass(frozen=True)
class Run:
    """One unit of work: ``model`` at ``size`` (``label.hash``, see the module doc) with ``seed``."""

    experiment: str
    model: str
    size: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.model}__{self.size}__seed{self.seed}"


def size_tag(label: str, settings: object) -> str:
    """``label.hash``: the hash (8 hex digits) is of the settings dataclass's fields."""
    text = json.dumps(asdict(settings), sort_keys=True)
    return f"{label}.{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def check_data(data: str | None) -> None:
    """The text file of an experiment that trains on text: given, and a file (one line otherwise)."""
    if data is None:
        raise ValueError("--data is required: the text file to train on (e.g. tinyshakespeare.txt)")
    if not Path(data).is_file():
        raise ValueError(f"--data: no such file: {data}")


def model_config(name: str, *, vocab_size: int, width: int, layers: int, heads: int, segment: int, **extra):
    """The :class:`~mcrnn.models.MCConfig` of model ``name`` (a key of :data:`MODELS`).

    Every constant-segment MC model uses segments of ``segment`` tokens with ``init="independent"``
    (each cached state summarises its own segment, as in the demo); deep memories use ``segment`` as
    their inner chunk. ``extra`` overrides config fields (e.g. ``intermediate_size``).
    """
    from mcrnn.models import MCConfig

    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {list(MODELS)}")
    fields = {k: segment if v == "segment" else v for k, v in MODELS[name][1].items()}
    if fields.get("segment_size") is not None:
        fields["init"] = "independent"
    return MCConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        num_hidden_layers=layers,
        num_heads=heads,
        **fields,
        **extra,
    )


def count_params(config) -> int:
    """Parameters of ``MCForCausalLM(config)``."""
    from mcrnn.models import MCForCausalLM

    return sum(p.numel() for p in MCForCausalLM(config).parameters())


def matched_config(name: str, target_params: int, **sizes):
    """``model_config(name, **sizes)`` with the SwiGLU width chosen so that the parameter count is the
    closest to ``target_params`` (a SwiGLU block has ``3 * width * intermediate`` weights)."""
    config = model_config(name, **sizes)
    per_unit = 3 * sizes["width"] * sizes["layers"]
    inter = max(1, config.intermediate_size + round((target_params - count_params(config)) / per_unit))
    return model_config(name, **sizes, intermediate_size=inter)


def recipe_options(*, steps: int, batch_size: int, lr: float, seed: int, device: str):
    """The experiments' training recipe as :class:`~mcrnn.train.TrainOptions`: AdamW, 10% warmup,
    cosine, weight decay 0.1, no logging or progress bars."""
    from mcrnn.train import TrainOptions

    return TrainOptions(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        warmup_steps=max(steps // 10, 1),
        weight_decay=0.1,
        seed=seed,
        log_every=10**9,
        progress=False,
        device=device,
    )


def train_model(config, dataset, *, steps: int, batch_size: int, lr: float, seed: int, device: str):
    """Train ``MCForCausalLM(config)`` (weights seeded by ``seed``) with :func:`recipe_options`;
    returns ``(model, TrainResult, wall seconds)``."""
    from mcrnn.models import MCForCausalLM
    from mcrnn.train import train

    torch.manual_seed(seed)
    model = MCForCausalLM(config)
    options = recipe_options(steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=device)
    started = time.perf_counter()
    result = train(model, dataset, options)
    return model, result, time.perf_counter() - started


def machine() -> dict:
    """Where a run ran: platform, CPU, cores, torch threads and version, GPU if any."""
    from mcrnn.eval.demo import _cpu_name

    return {
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def checkout_root() -> Path | None:
    """The source checkout mcrnn runs from (the folder holding ``mcrnn/`` and ``docs/results.md``), or
    None for an installed package."""
    root = Path(__file__).resolve().parents[3]
    return root if (root / "mcrnn").is_dir() and (root / "docs" / "results.md").is_file() else None


#: where the committed per-run results live, relative to the checkout (``docs/results/runs/<experiment>/``)
CHECKOUT_RUNS = Path("docs") / "results" / "runs"


#: the tracked paths whose changes make a run's recorded commit ``+dirty``
CODE_PATHS = ("mcrnn", "pyproject.toml")


@cache
def source_commit() -> str | None:
    """The git commit of the checkout mcrnn runs from, ``+dirty`` when its code (``CODE_PATHS``) differs
    from it; None outside a git checkout. Only the code counts: a run rewriting the committed page
    (``docs/``) does not make the next run's code dirty. Read once per process (the code a process imported
    is the code it runs)."""
    root = checkout_root()
    if root is None:
        return None

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, check=True
        ).stdout

    try:
        head, status = git("rev-parse", "HEAD").strip(), git(
            "status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if status.strip() else "")


def result_path(out: Path, run: Run) -> Path:
    return out / run.experiment / f"{run.key}.json"


def failure_path(out: Path, run: Run) -> Path:
    return out / run.experiment / "failed" / f"{run.key}.json"


def execute(
    runs: Sequence[Run],
    work: Callable[[Run], dict],
    out: Path,
    *,
    settings: object,
    command: str,
    log: Callable[[str], None] = print,
) -> dict[str, int]:
    """Run every run whose result file is absent; returns ``{"done", "skipped", "failed"}`` counts.

    ``work(run)`` returns the run's metrics; the result file adds the run's fields, the settings, the
    wall time, the machine and ``command``. An exception fails that run only.
    """
    counts = {"done": 0, "skipped": 0, "failed": 0}
    commit = source_commit()  # before any run: the code this process imported
    for index, run in enumerate(runs, 1):
        path = result_path(out, run)
        where = f"[{index}/{len(runs)}] {run.experiment} {run.key}"
        if path.is_file():
            counts["skipped"] += 1
            log(f"{where}: done before, skipped")
            continue
        started = time.perf_counter()
        try:
            metrics = work(run)
        except Exception as err:  # one failed run must not stop the others
            counts["failed"] += 1
            message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            log(f"{where}: FAILED: {type(err).__name__}: {message}")
            failure = {"key": run.key, "error": f"{type(err).__name__}: {message}", "command": command}
            failure |= {"settings": asdict(settings), "traceback": traceback.format_exc()}
            write_json(failure_path(out, run), {**asdict(run), **failure})
            continue
        seconds = time.perf_counter() - started
        write_json(
            path,
            {
                **asdict(run),
                "key": run.key,
                "metrics": metrics,
                "settings": asdict(settings),
                "wall_seconds": seconds,
                "machine": machine(),
                "command": command,
                "commit": commit,
                "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            },
        )
        failure_path(out, run).unlink(missing_ok=True)
        counts["done"] += 1
        log(f"{where}: done in {seconds:.1f}s")
    return counts


def load_results(out: Path, experiment: str) -> list[dict]:
    """Every result JSON of ``experiment`` under ``out`` (sorted by key)."""
    folder = out / experiment
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))]


def at_settings(settings: dict, current: object) -> bool:
    """Whether a run's recorded ``settings`` are ``current`` (a Settings dataclass). A field that is None
    in ``current`` matches any value: it is an input each run names (``data``), not a setting."""
    wanted = json.loads(json.dumps(asdict(current)))  # tuples as the JSON files hold them: lists
    return all(value is None or settings.get(name) == value for name, value in wanted.items())


def by_settings(results: list[dict], current: object) -> tuple[list[dict], list[list[dict]]]:
    """``results`` split by their settings: ``(the runs at current, which may be none; the other groups,
    most runs first)``."""
    ours = [r for r in results if at_settings(r["settings"], current)]
    groups: dict[str, list[dict]] = {}
    for result in results:
        if not at_settings(result["settings"], current):
            groups.setdefault(json.dumps(result["settings"], sort_keys=True), []).append(result)
    return ours, sorted(groups.values(), key=lambda g: -len(g))


def load_failures(out: Path, experiment: str) -> list[dict]:
    """Every recorded failure of ``experiment`` under ``out`` (sorted by key)."""
    folder = out / experiment / "failed"
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))]
