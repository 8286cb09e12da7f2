"""``mcrnn train --config cfg.yaml [--resume]``; N processes: ``torchrun --nproc_per_node=N -m mcrnn ...``."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, help="YAML file with model / data / eval_data / train sections"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint in out_dir"
    )
    parser.add_argument("--out-dir", help="override train.out_dir")
    parser.add_argument("--steps", type=int, help="override train.steps")


def run(args: argparse.Namespace) -> int:
    from mcrnn.train.config import load_config, run_config

    raw = load_config(args.config)
    overrides = {k: v for k, v in (("out_dir", args.out_dir), ("steps", args.steps)) if v is not None}
    try:
        result = run_config(raw, resume=args.resume, overrides=overrides)
    except KeyboardInterrupt:
        print("interrupted: the last complete checkpoint is intact; continue with --resume", file=sys.stderr)
        return 130
    last = result.losses[-1] if result.losses else float("nan")
    print(f"done: {len(result.losses)} steps, final loss {last:.4f}, {result.tokens_per_second:,.0f} tok/s")
    if result.evals:
        print("eval: " + ", ".join(f"{k}={v:.4g}" for k, v in result.evals[-1].items() if k != "step"))
    if result.checkpoint:
        print(f"checkpoint: {result.checkpoint}")
    return 0
