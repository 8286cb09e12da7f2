"""Evaluate a trained model: MQAR recall, S-NIAH per context length, perplexity on text files, and
length extrapolation (optionally with post-training Memory Caching, ``--average-segment-size``).

Prints one table per task (its title says which metric it shows) and writes ``results.json`` (scores
and what they were measured on) and plots into ``--out``. Extrapolation scores perplexity on ``--data``
when it is given, else MQAR accuracy; a model trained on text needs ``--data``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mcrnn.utils.arguments import ExtendList, list_of, positive_int

TASKS = ("mqar", "niah", "ppl", "extrapolation")
NIAH_TASKS = ("niah_1", "niah_2", "niah_3")
SPLITS = ("val", "train", "all")
#: the part of the token stream each --split reads (TextDataset's default val_fraction = 0.1)
SPLIT_TEXT = {"val": "last 10%", "train": "first 90%", "all": "all"}

EXAMPLES = """
  mcrnn eval --model runs/x/checkpoints/step_00002000 --task mqar niah --lengths 512 1024 2048
  mcrnn eval --model DIR --task ppl --data data/tinyshakespeare.txt --seq-len 256
  mcrnn eval --model DIR --task extrapolation --data data/tinyshakespeare.txt --factors 1 2 4 \\
      --average-segment-size 64
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a checkpoint or save_pretrained folder")
    parser.add_argument(
        "--task", action=ExtendList, type=list_of(str, TASKS), required=True,
        help=f"tasks to run, of {', '.join(TASKS)}",
    )
    parser.add_argument("--out", default="runs/eval", help="folder for results.json and plots")
    parser.add_argument(
        "--seq-len", type=positive_int, default=256, help="MQAR / text length (the training length)"
    )
    parser.add_argument("--num-pairs", type=positive_int, default=16, help="MQAR key-value pairs")
    parser.add_argument(
        "--num-examples", type=positive_int, default=256, help="examples per MQAR / S-NIAH split"
    )
    parser.add_argument(
        "--niah-tasks", action=ExtendList, type=list_of(str, NIAH_TASKS), default=list(NIAH_TASKS),
        help="S-NIAH tasks",
    )
    parser.add_argument(
        "--lengths", action=ExtendList, type=list_of(positive_int), default=[256, 512, 1024],
        help="S-NIAH context lengths",
    )
    parser.add_argument(
        "--data", action=ExtendList, type=list_of(str), default=None,
        help="text files (.txt/.jsonl) for ppl / extrapolation",
    )
    parser.add_argument(
        "--split", choices=SPLITS, default="val",
        help="part of --data to score: val = its last 10%%, train = the first 90%%, all",
    )
    parser.add_argument(
        "--tokenizer", default=None, help="a Hugging Face tokenizer name (default: the byte tokenizer)"
    )
    parser.add_argument(
        "--factors", action=ExtendList, type=list_of(positive_int), default=[1, 2, 4],
        help="extrapolation lengths, as multiples of --seq-len",
    )
    parser.add_argument(
        "--average-segment-size", type=positive_int, default=None,
        help="also evaluate the model with post-training MC (aggregation='average') at this segment size",
    )
    parser.add_argument("--batch-size", type=positive_int, default=8, help="sequences per forward pass")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the MQAR / S-NIAH examples")


def _check_args(args: argparse.Namespace) -> None:
    """Validate what argparse does not (and calls that bypass it), before any work."""
    for name in ("seq_len", "num_pairs", "num_examples", "batch_size"):
        value = getattr(args, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be an int >= 1, got {value!r}")
    for name in ("lengths", "factors"):
        values = getattr(args, name)
        if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
            raise ValueError(f"--{name} must list ints >= 1, got {values!r}")
    size = args.average_segment_size
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"--average-segment-size must be an int >= 1, got {size!r}")
    unknown = sorted(set(args.task) - set(TASKS)) + sorted(set(args.niah_tasks) - set(NIAH_TASKS))
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; --task takes {TASKS}, --niah-tasks {NIAH_TASKS}")
    if "ppl" in args.task and not args.data:
        raise ValueError("--task ppl needs --data FILE [FILE ...]")
    for file in args.data or []:
        if not Path(file).is_file():
            raise FileNotFoundError(f"--data file not found: {file}")


def _training_data(model_dir: Path) -> str | None:
    """The kind of data a checkpoint was trained on (``text``, ``mqar``, ...) from its ``run.json``;
    None for a ``save_pretrained`` folder, which does not record it."""
    from mcrnn.train.checkpoint import RUN_FILE, read_run_info

    return read_run_info(model_dir).get("data") if (model_dir / RUN_FILE).is_file() else None


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    path = Path(args.model)
    if "extrapolation" in args.task and not args.data:
        trained_on = _training_data(path)
        if trained_on not in (None, "mqar"):
            raise ValueError(
                f"the model at {path} was trained on {trained_on} data: --task extrapolation needs --data "
                "FILE (without it, extrapolation scores MQAR accuracy)"
            )

    from mcrnn.data import MQARConfig, MQARDataset, TextDataset
    from mcrnn.eval.harness import eval_extrapolation, eval_mqar, eval_niah, eval_perplexity, load_model
    from mcrnn.eval.report import format_table, plot_lines, write_json

    model = load_model(path)
    vocab = model.config.vocab_size
    out = Path(args.out)
    results: dict[str, object] = {"model": str(path)}

    def text(length: int) -> TextDataset:
        return TextDataset(args.data, length, tokenizer=args.tokenizer, split=args.split)

    def mqar(length: int) -> MQARDataset:
        """MQAR at ``length`` tokens, the number of pairs growing with the length."""
        pairs = args.num_pairs * length // args.seq_len
        return MQARDataset(MQARConfig(vocab, pairs, length, args.num_examples, seed=args.seed))

    if "mqar" in args.task:
        config = MQARConfig(vocab, args.num_pairs, args.seq_len, args.num_examples, seed=args.seed)
        scores = eval_mqar(model, config, batch_size=args.batch_size)
        results["mqar"] = {"seq_len": args.seq_len, "num_pairs": args.num_pairs, **scores}
        print(f"mqar: accuracy of recalled values, T={args.seq_len}, {args.num_pairs} pairs")
        print(format_table([{"task": "mqar", **scores}], ["task", "accuracy", "loss"]))
    if "niah" in args.task:
        niah = eval_niah(
            model, args.niah_tasks, args.lengths, num_examples=args.num_examples, seed=args.seed,
            batch_size=args.batch_size,
        )
        results["niah"] = niah
        rows = [{"task": t, **{str(n): acc for n, acc in per.items()}} for t, per in niah.items()]
        print("niah: exact-match accuracy per context length")
        print(format_table(rows, ["task", *map(str, args.lengths)]))
        plot_lines(
            out / "niah.png", niah, title="S-NIAH accuracy", xlabel="context length", ylabel="accuracy"
        )
    where = f"{SPLIT_TEXT[args.split]} ({args.split} split) of {', '.join(args.data or [])}"
    if "ppl" in args.task:
        data = text(args.seq_len)
        scores = eval_perplexity(model, data, batch_size=args.batch_size)
        results["ppl"] = {"data": list(args.data), "split": args.split, "seq_len": args.seq_len,
                          "windows": len(data), **scores}
        print(f"ppl: perplexity on the {where}, {len(data)} windows of {args.seq_len} tokens")
        print(format_table([{"task": "ppl", **scores}], ["task", "perplexity", "loss", "tokens"]))
    if "extrapolation" in args.task:
        make, metric = (text, "perplexity") if args.data else (mqar, "accuracy")
        source = f"text: {where}" if args.data else "MQAR, pairs growing with the length"
        ext = eval_extrapolation(
            model, make, args.seq_len, factors=args.factors, average_segment_size=args.average_segment_size,
            metric=metric, batch_size=args.batch_size,
        )
        results["extrapolation"] = {"metric": metric, "source": source, **ext}
        rows = [{"variant": name, **{str(n): v for n, v in per.items()}} for name, per in ext.items()]
        lengths = [str(int(f * args.seq_len)) for f in args.factors]
        print(f"extrapolation: {metric} per length ({source})")
        print(format_table(rows, ["variant", *lengths]))
        plot_lines(
            out / "extrapolation.png", ext, title=f"{metric} vs length", xlabel="length", ylabel=metric
        )
    write_json(out / "results.json", results)
    print(f"wrote {out / 'results.json'}")
    return 0
