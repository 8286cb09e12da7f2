"""One entry point: ``mcrnn train|eval|bench|demo``.

Each sub-command lives in its own package and exposes ``add_arguments(parser)`` and ``run(args)``;
this module only wires them to argparse, importing a sub-command's package when it is chosen.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: sub-command -> (module, help text)
COMMANDS: dict[str, tuple[str, str]] = {
    "bench": ("mcrnn.bench.cli", "throughput benchmarks of the ops and layers"),
    "train": ("mcrnn.train.cli", "train a model from a YAML config"),
    "eval": ("mcrnn.eval.cli", "evaluate a trained model (MQAR, S-NIAH, perplexity, extrapolation)"),
    "demo": ("mcrnn.eval.demo", "train tiny models on MQAR and show MC closing the recall gap"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mcrnn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if a in COMMANDS), None)
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text)
        if name == chosen:
            importlib.import_module(module_name).add_arguments(command_parser)
    args, _ = parser.parse_known_args(argv) if chosen is None else (parser.parse_args(argv), None)
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except (FileNotFoundError, ValueError) as err:  # bad input: one line naming it, not a traceback
        print(f"mcrnn {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
