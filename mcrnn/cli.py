"""One entry point: ``mcrnn prepare-data|train|estimate|eval|bench|demo|experiment``.

Each sub-command lives in its own package and exposes ``add_arguments(parser)``, ``run(args)`` and
``EXAMPLES`` (shown under ``--help``); this module wires them to argparse, importing a sub-command's
package only when it is chosen. A bad argument or input file ends the command with one line on stderr,
``mcrnn <command>: error: <what was wrong>``, and exit status 2; ``--debug`` shows the traceback instead.

Every list option takes its items space- or comma-separated, and may be repeated:
``--lengths 512 1024``, ``--lengths 512,1024`` and ``--lengths 512 --lengths 1024`` are the same.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import sys
from typing import NoReturn

DESCRIPTION = """Memory Caching for recurrent sequence models: train, evaluate, benchmark, demo.

A bad argument or input file is one line on stderr (exit status 2); --debug shows the traceback.
List options take their items space- or comma-separated and may be repeated:
--lengths 512 1024, --lengths 512,1024 and --lengths 512 --lengths 1024 are the same.
"""

EXAMPLES = """examples:
  mcrnn demo
  mcrnn prepare-data corpus/ --out data/shards --tokenizer byte
  mcrnn train --config cfg.yaml
  mcrnn eval --model runs/x/checkpoints/step_00002000 --task mqar niah
  mcrnn bench --suite ops
  mcrnn experiment recall --quick
  mcrnn eval --help                 # every sub-command's options, defaults and examples
"""

#: sub-command -> (module, help text)
COMMANDS: dict[str, tuple[str, str]] = {
    "bench": ("mcrnn.bench.cli", "throughput benchmarks of the ops and layers"),
    "prepare-data": ("mcrnn.train.prepare", "tokenize text files into memory-mapped token shards"),
    "train": ("mcrnn.train.cli", "train a model from a YAML config"),
    "estimate": ("mcrnn.train.estimate", "parameters, memory per GPU, tokens/s and GPU-hours of a config"),
    "eval": ("mcrnn.eval.cli", "evaluate a trained model (MQAR, S-NIAH, perplexity, extrapolation)"),
    "demo": ("mcrnn.eval.demo", "train tiny models on MQAR and show MC closing the recall gap"),
    "experiment": ("mcrnn.eval.experiments.cli", "reproducible experiments with a results page"),
}


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block) that points to ``--help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's and examples' line breaks and shows every option's default that is
    not None or False (a list as its items)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "%(default)" in help_text:
            return help_text
        return help_text + " (default: %(default)s)"

    def _expand_help(self, action: argparse.Action) -> str:
        if isinstance(action.default, (list, tuple)):
            action = copy.copy(action)
            action.default = " ".join(map(str, action.default))
        return super()._expand_help(action)


def _one_line(err: BaseException) -> str:
    """The error's first line; the type is named unless it is a plain bad-input error."""
    lines = str(err).strip().splitlines()
    message = lines[0] if lines else ""
    if isinstance(err, (ValueError, OSError)):
        return message or type(err).__name__
    return f"{type(err).__name__}: {message} (run with --debug for the traceback)"


def build_parser(chosen: str | None) -> ArgumentParser:
    """The ``mcrnn`` parser; only the ``chosen`` sub-command's module is imported to add its options."""
    parser = ArgumentParser(
        prog="mcrnn", description=DESCRIPTION, epilog=EXAMPLES, formatter_class=HelpFormatter
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show the full traceback of an error"
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    for name, (module_name, help_text) in COMMANDS.items():
        if name != chosen:
            sub.add_parser(name, help=help_text)
            continue
        module = importlib.import_module(module_name)
        command_parser = sub.add_parser(
            name,
            help=help_text,
            parents=[common],
            formatter_class=HelpFormatter,
            description=module.__doc__,
            epilog="examples:\n" + module.EXAMPLES.strip("\n"),
        )
        module.add_arguments(command_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if a in COMMANDS), None)
    args = build_parser(chosen).parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print(f"mcrnn {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # bad input: one line naming it, not a traceback (unless --debug)
        if args.debug:
            raise
        print(f"mcrnn {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
