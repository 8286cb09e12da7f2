"""Train a model described by a YAML file (model / data / eval_data / train sections).

Writes ``metrics.jsonl``, ``loss.png`` and ``checkpoints/step_<N>/`` into ``train.out_dir``. A fresh run
into a folder that already holds a run is refused: continue it with ``--resume`` or replace it with
``--overwrite``. One training runs per folder (``out_dir/train.lock``). Several processes:
``torchrun --nproc_per_node=N -m mcrnn train ...``.
"""

from __future__ import annotations

import argparse
import sys

from mcrnn.utils.arguments import positive_int

EXAMPLES = """
  mcrnn train --config cfg.yaml
  mcrnn train --config cfg.yaml --resume --steps 4000
  torchrun --nproc_per_node=2 -m mcrnn train --config cfg.yaml --out-dir runs/ddp --overwrite
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, help="YAML file with model / data / eval_data / train sections"
    )
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in out_dir")
    start.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the run already in out_dir (metrics, checkpoints, logs) and start afresh",
    )
    parser.add_argument(
        "--allow-data-change",
        action="store_true",
        help="with --resume: continue although the data section differs from the checkpoint's",
    )
    parser.add_argument("--out-dir", help="override train.out_dir")
    parser.add_argument("--steps", type=positive_int, help="override train.steps")


def run(args: argparse.Namespace) -> int:
    from mcrnn.train.config import load_config, run_config

    raw = load_config(args.config)
    overrides = {k: v for k, v in (("out_dir", args.out_dir), ("steps", args.steps)) if v is not None}
    try:
        result = run_config(
            raw,
            resume=args.resume,
            overwrite=getattr(args, "overwrite", False),
            overrides=overrides,
            allow_data_change=args.allow_data_change,
        )
    except KeyboardInterrupt:
        print("interrupted: the last complete checkpoint is intact; continue with --resume", file=sys.stderr)
        return 130
    if result.losses:
        last, speed = result.losses[-1], result.tokens_per_second
        print(f"done: {len(result.losses)} steps, final loss {last:.4f}, {speed:,.0f} tok/s")
    if result.evals:
        print("eval: " + ", ".join(f"{k}={v:.4g}" for k, v in result.evals[-1].items() if k != "step"))
    if result.checkpoint:
        print(f"checkpoint: {result.checkpoint}")
    return 0
