"""Reproducible experiments of the paper's claims, resumable, with a results page.

``mcrnn experiment NAME`` runs every (model, size, seed) of experiment NAME that has no result yet in
``--out/NAME/`` (a re-run skips finished runs; a failed run is reported, the others go on, and the exit
status is 1), then writes the results page (tables of mean ± std over the seeds, plots, machine, wall
time, exact commands, commits) from every result under ``--out``, led by the settings that just ran.
``mcrnn experiment report`` only writes the page, led by the default settings.

Where: run from a source checkout, ``--out`` defaults to the checkout's ``docs/results/runs`` (the
per-run JSONs committed with the repository) and the page to its ``docs/results.md``, plots in
``docs/results/``; with ``--quick`` (a smoke test that never belongs on that page) or from an installed
package, ``--out`` defaults to ``runs/experiments``. A page whose ``--out`` is not the checkout's goes
to ``--out/results.md`` unless ``--page`` names it. The recorded command names ``--out`` only when given.

``ordering`` runs nothing: it is a table computed from the other experiments' results, written with
the page. The experiments on text (lm, post-training) need ``--data FILE``; a missing file stops the
command before any run.

Experiments: recall (MQAR accuracy vs width), niah (S-NIAH-1/2/3 at three lengths), lm (character-level
tinyshakespeare perplexity at equal parameters, with throughput), post-training (average caching of
models trained without caching, at 1-8x the training length), ordering (the paper's claims).
Size flags replace the experiment's defaults (a flag the experiment has no use for is an error).
"""

from __future__ import annotations

import argparse
from dataclasses import fields, replace
from pathlib import Path

from mcrnn.eval.experiments import EXPERIMENTS
from mcrnn.eval.experiments.runner import check_data
from mcrnn.utils.arguments import ExtendList, list_of, positive_int

NAMES = (*EXPERIMENTS, "report")
#: options (argparse dests) that replace the Settings field of the same name
SETTING_FLAGS = (
    "widths",
    "deep_widths",
    "attention_widths",
    "plain_attention_widths",
    "width",
    "steps",
    "seq_len",
    "batch_size",
    "eval_examples",
    "lengths",
    "factors",
    "data",
)

EXAMPLES = """
  mcrnn experiment recall --quick
  mcrnn experiment recall --seeds 0 1 2 --out runs/experiments --threads 1
  mcrnn experiment lm --device cuda --width 256 --steps 5000 --seq-len 512
  mcrnn experiment report --out runs/experiments --page docs/results.md
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help=f"one of {', '.join(NAMES)}")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of every run")
    parser.add_argument(
        "--seeds", action=ExtendList, type=list_of(int), default=[0, 1, 2], help="seeds of every run"
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to train")
    parser.add_argument(
        "--out",
        default=None,
        help="folder of the per-run result JSONs (default: the checkout's docs/results/runs; "
        "runs/experiments with --quick or outside a checkout)",
    )
    parser.add_argument(
        "--page",
        default=None,
        help="results page to write (default: the checkout's docs/results.md for its runs, "
        "else OUT/results.md)",
    )
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--models", action=ExtendList, type=list_of(str), default=None, help="a subset of the models"
    )
    sizes = parser.add_argument_group("size flags (replace the experiment's defaults)")
    sizes.add_argument(
        "--widths", action=ExtendList, type=list_of(positive_int), help="widths of the linear memory (recall)"
    )
    sizes.add_argument(
        "--deep-widths",
        action=ExtendList,
        type=list_of(positive_int),
        help="widths of the deep memory (recall)",
    )
    sizes.add_argument(
        "--attention-widths",
        action=ExtendList,
        type=list_of(positive_int),
        help="widths of the Transformer++ with the short convolution (recall)",
    )
    sizes.add_argument(
        "--plain-attention-widths",
        action=ExtendList,
        type=list_of(positive_int),
        help="widths of the plain Transformer++ (recall)",
    )
    sizes.add_argument("--width", type=positive_int, help="model width (niah, lm, post-training)")
    sizes.add_argument("--steps", type=positive_int, help="training steps per run")
    sizes.add_argument("--seq-len", type=positive_int, help="training length")
    sizes.add_argument("--batch-size", type=positive_int, help="training sequences per step")
    sizes.add_argument("--eval-examples", type=positive_int, help="held-out examples per evaluation")
    sizes.add_argument(
        "--lengths", action=ExtendList, type=list_of(positive_int), help="S-NIAH context lengths (niah)"
    )
    sizes.add_argument("--data", help="text file to train on (lm, post-training: required)")
    sizes.add_argument(
        "--factors",
        action=ExtendList,
        type=list_of(positive_int),
        help="evaluation lengths as multiples of the training length (post-training)",
    )


def settings_of(module, args: argparse.Namespace):
    """The experiment's settings: its defaults (``QUICK`` with ``--quick``) with the size flags given."""
    settings = module.QUICK if args.quick else module.Settings()
    known = {f.name for f in fields(settings)}
    changes = {}
    for flag in SETTING_FLAGS:
        value = getattr(args, flag, None)
        if value is None:
            continue
        if flag not in known:
            raise ValueError(f"--{flag.replace('_', '-')} does not apply to experiment {module.NAME!r}")
        changes[flag] = tuple(value) if isinstance(value, list) else value
    settings = replace(settings, **changes)
    if "data" in known:
        check_data(settings.data)
    return settings


def command_of(args: argparse.Namespace) -> str:
    """The command that repeats this one: every option that changes a run, spelled out."""
    parts = ["mcrnn", "experiment", args.name, *(["--quick"] if args.quick else [])]
    parts += ["--seeds", *map(str, args.seeds), "--device", args.device]
    for flag in ("out", "threads", "models", *SETTING_FLAGS):
        value = getattr(args, flag, None)
        if value is not None:
            parts += [f"--{flag.replace('_', '-')}", *map(str, value if isinstance(value, list) else [value])]
    return " ".join(parts)


def run(args: argparse.Namespace) -> int:
    import torch

    from mcrnn.eval.experiments import experiment_module
    from mcrnn.eval.experiments.page import write_page

    if args.name not in NAMES:
        raise ValueError(f"unknown experiment {args.name!r}; choose from {', '.join(NAMES)}")
    if not args.seeds:
        raise ValueError("--seeds needs at least one seed")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    trains = args.name != "report" and hasattr(experiment_module(args.name), "plan")
    given = [flag for flag in ("models", *SETTING_FLAGS) if getattr(args, flag, None) is not None]
    if given and not trains:
        raise ValueError(f"--{given[0].replace('_', '-')} does not apply to {args.name!r}: it trains nothing")
    out, page = where(args)
    failed, current = 0, {}
    if trains:
        module = experiment_module(args.name)
        settings = settings_of(module, args)  # a missing --data file stops here, before any run
        failed = run_experiment(module, settings, args, out)
        current[args.name] = settings
    write_page(out, page, current)
    print(f"wrote {page}")
    return 1 if failed else 0


def where(args: argparse.Namespace) -> tuple[Path, Path]:
    """``(folder of the per-run results, results page)`` of the command (see the module doc)."""
    from mcrnn.eval.experiments.runner import CHECKOUT_RUNS, checkout_root

    root = checkout_root()
    if args.out is not None:
        out = Path(args.out)
    elif root is not None and not args.quick:
        out = root / CHECKOUT_RUNS
    else:
        out = Path("runs/experiments")
    if args.page is not None:
        return out, Path(args.page)
    in_checkout = root is not None and out.resolve() == (root / CHECKOUT_RUNS).resolve()
    return out, (root / "docs" / "results.md" if in_checkout else out / "results.md")


def run_experiment(module, settings, args: argparse.Namespace, out: Path) -> int:
    """Run the experiment's runs (those of ``--models``) that have no result yet; returns the failed count."""
    from mcrnn.eval.experiments.runner import execute

    runs = module.plan(settings, list(args.seeds))
    if args.models is not None:
        unknown = sorted(set(args.models) - set(module.MODEL_NAMES))
        if unknown:
            raise ValueError(f"--models: unknown {unknown} for {args.name}; choose from {module.MODEL_NAMES}")
        runs = [r for r in runs if r.model in args.models]
    counts = execute(
        runs,
        lambda r: module.work(r, settings, args.device),
        out,
        settings=settings,
        command=command_of(args),
    )
    print(f"{args.name}: {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed")
    return counts["failed"]
