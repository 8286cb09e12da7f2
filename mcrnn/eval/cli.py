"""``mcrnn eval --model DIR --task mqar|niah|ppl|extrapolation ...``: scores, a table, JSON and plots."""

from __future__ import annotations

import argparse
from pathlib import Path


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a checkpoint or save_pretrained folder")
    parser.add_argument(
        "--task", action="append", choices=("mqar", "niah", "ppl", "extrapolation"), required=True,
        help="repeat for several tasks",
    )  # fmt: skip
    parser.add_argument("--out", default="runs/eval", help="folder for results.json and plots")
    parser.add_argument("--seq-len", type=int, default=256, help="MQAR / text length (the training length)")
    parser.add_argument("--num-pairs", type=int, default=16, help="MQAR key-value pairs")
    parser.add_argument("--num-examples", type=int, default=256, help="examples per MQAR / S-NIAH split")
    parser.add_argument("--niah-tasks", default="niah_1,niah_2,niah_3")
    parser.add_argument("--lengths", type=_ints, default=[256, 512, 1024], help="S-NIAH context lengths")
    parser.add_argument("--data", nargs="+", help="text files (.txt/.jsonl) for ppl / extrapolation")
    parser.add_argument("--tokenizer", default=None, help="'byte' (default) or a Hugging Face tokenizer")
    parser.add_argument("--factors", type=_ints, default=[1, 2, 4], help="extrapolation length factors")
    parser.add_argument(
        "--average-segment-size", type=int, default=None,
        help="also evaluate the model with post-training MC (aggregation='average') at this segment size",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1234)


def run(args: argparse.Namespace) -> int:
    from mcrnn.data import MQARConfig, MQARDataset, TextDataset
    from mcrnn.eval.harness import eval_extrapolation, eval_mqar, eval_niah, eval_perplexity
    from mcrnn.eval.report import format_table, plot_lines, write_json
    from mcrnn.models import MCForCausalLM

    path = Path(args.model)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no model at {path} (expected config.json and model.safetensors)")
    model = MCForCausalLM.from_pretrained(path).eval()
    vocab = model.config.vocab_size
    out = Path(args.out)
    results: dict[str, object] = {"model": str(path)}

    def mqar(length: int) -> MQARDataset:
        """MQAR at ``length`` tokens, the number of pairs growing with the length."""
        pairs = args.num_pairs * length // args.seq_len
        return MQARDataset(MQARConfig(vocab, pairs, length, args.num_examples, seed=args.seed))

    if "mqar" in args.task:
        scores = eval_mqar(
            model, MQARConfig(vocab, args.num_pairs, args.seq_len, args.num_examples, seed=args.seed)
        )
        results["mqar"] = scores
        print(format_table([{"task": "mqar", **scores}], ["task", "accuracy", "loss"]))
    if "niah" in args.task:
        niah = eval_niah(
            model, args.niah_tasks.split(","), args.lengths, num_examples=args.num_examples, seed=args.seed
        )
        results["niah"] = niah
        rows = [{"task": t, **{str(n): acc for n, acc in per.items()}} for t, per in niah.items()]
        print(format_table(rows, ["task", *map(str, args.lengths)]))
        plot_lines(
            out / "niah.png", niah, title="S-NIAH accuracy", xlabel="context length", ylabel="accuracy"
        )
    if "ppl" in args.task:
        if not args.data:
            raise ValueError("--task ppl needs --data FILE [FILE ...]")
        data = TextDataset(args.data, args.seq_len, tokenizer=args.tokenizer, split="val")
        results["ppl"] = eval_perplexity(model, data, batch_size=args.batch_size)
        print(format_table([{"task": "ppl", **results["ppl"]}], ["task", "perplexity", "loss", "tokens"]))
    if "extrapolation" in args.task:
        if args.data:

            def make(length: int) -> TextDataset:
                return TextDataset(args.data, length, tokenizer=args.tokenizer, split="val")

            metric = "perplexity"
        else:
            make, metric = mqar, "accuracy"
        ext = eval_extrapolation(
            model, make, args.seq_len, factors=args.factors, average_segment_size=args.average_segment_size,
            metric=metric, batch_size=args.batch_size,
        )  # fmt: skip
        results["extrapolation"] = {"metric": metric, **ext}
        rows = [{"variant": name, **{str(n): v for n, v in per.items()}} for name, per in ext.items()]
        lengths = [str(int(f * args.seq_len)) for f in args.factors]
        print(format_table(rows, ["variant", *lengths]))
        plot_lines(
            out / "extrapolation.png", ext, title=f"{metric} vs length", xlabel="length", ylabel=metric
        )
    write_json(out / "results.json", results)
    print(f"wrote {out / 'results.json'}")
    return 0
