"""``niah`` (paper Table 2): S-NIAH-1/2/3 accuracy at three context lengths, trained at the shortest.

Every model is trained from scratch on a mixture of the three S-NIAH tasks (byte tokens) at the
shortest context length only, then scored by exact match of the needle's value (teacher-forced argmax
of every answer token, which equals greedy decoding) on held-out examples at each length. Models: the
linear memory as the base RNN, + GRM, + SSC (top-2), Log-Linear++, and the Transformer++ (learning
rates as in ``recall``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from mcrnn.eval.experiments.runner import Run, model_config, size_tag, train_model

NAME = "niah"
MODEL_NAMES = ("base", "grm", "ssc", "log", "transformer")
TASKS = ("niah_1", "niah_2", "niah_3")


@dataclass(frozen=True)
class Settings:
    lengths: tuple[int, ...] = (320, 640, 1280)
    width: int = 32
    layers: int = 2
    heads: int = 4
    segment: int = 64
    steps: int = 150
    batch_size: int = 8
    lr: float = 1e-2
    transformer_lr: float = 3e-3
    eval_examples: int = 32


QUICK = Settings(lengths=(256, 272), width=8, heads=2, segment=16, steps=2, batch_size=2, eval_examples=2)


class MixedNIAH(Dataset):
    """Item ``i`` is S-NIAH task ``TASKS[i % 3]`` at ``context_length``, right-padded (id ``pad_id``,
    label -100) to the longest answer so that the tasks stack into one batch."""

    def __init__(self, context_length: int, num_examples: int, seed: int, pad_id: int) -> None:
        from mcrnn.data import NIAHConfig, NIAHDataset

        per_task = -(-num_examples // len(TASKS))
        self.parts = [NIAHDataset(NIAHConfig(task=t, context_length=context_length, num_examples=per_task,
                                             seed=seed)) for t in TASKS]
        self.length = max(len(p[0]["input_ids"]) for p in self.parts)
        self.num_examples = num_examples
        self.pad_id = pad_id

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = self.parts[index % len(TASKS)][index // len(TASKS)]
        pad = self.length - len(item["input_ids"])
        return {
            "input_ids": torch.nn.functional.pad(item["input_ids"], (0, pad), value=self.pad_id),
            "labels": torch.nn.functional.pad(item["labels"], (0, pad), value=-100),
        }


def plan(settings: Settings, seeds: list[int]) -> list[Run]:
    size = size_tag(f"w{settings.width}", settings)
    return [Run(NAME, model, size, seed) for model in MODEL_NAMES for seed in seeds]


def work(run: Run, s: Settings, device: str) -> dict:
    from mcrnn.data import ByteTokenizer
    from mcrnn.eval.harness import eval_niah

    tokenizer = ByteTokenizer()
    config = model_config(run.model, vocab_size=tokenizer.vocab_size, width=s.width, layers=s.layers,
                          heads=s.heads, segment=s.segment)
    train_length = min(s.lengths)
    data = MixedNIAH(train_length, s.steps * s.batch_size, seed=1000 + run.seed, pad_id=tokenizer.eos_id)
    lr = s.transformer_lr if run.model == "transformer" else s.lr
    model, trained, seconds = train_model(config, data, steps=s.steps, batch_size=s.batch_size, lr=lr,
                                          seed=run.seed, device=device)
    with torch.no_grad():
        scores = eval_niah(
            model, TASKS, sorted(s.lengths), num_examples=s.eval_examples, seed=2000 + run.seed, batch_size=8
        )
    return {
        "train_length": train_length,
        "accuracy": {t: {str(n): a for n, a in per.items()} for t, per in scores.items()},
        "final_train_loss": sum(trained.losses[-10:]) / len(trained.losses[-10:]), "lr": lr,
        "params": sum(p.numel() for p in model.parameters()), "train_seconds": seconds,
        "train_tokens_per_second": trained.tokens_per_second,
    }


def section(results: list[dict], plot_dir: Path, page_dir: Path) -> list[str]:
    """One table: a row per model, a column per (task, length); a plot of the mean over the tasks."""
    from mcrnn.eval.experiments.page import relative
    from mcrnn.eval.experiments.runner import MODELS
    from mcrnn.eval.experiments.stats import by_group, cell, metric_stats
    from mcrnn.eval.report import format_table, plot_lines

    lengths = sorted({int(n) for r in results for n in r["metrics"]["accuracy"][TASKS[0]]})
    groups = by_group(results, lambda r: r["model"])
    columns = [f"{t.replace('niah_', 'S-NIAH-')} @{n}" for t in TASKS for n in lengths]
    rows, series = [], {}
    for model in MODEL_NAMES:
        if model not in groups:
            continue
        runs = groups[model]
        row = {"model": MODELS[model][0]}
        for task in TASKS:
            for n in lengths:
                stats = metric_stats(runs, lambda r, t=task, n=n: r["metrics"]["accuracy"][t][str(n)])
                row[f"{task.replace('niah_', 'S-NIAH-')} @{n}"] = cell(stats, 2)
        rows.append(row)
        series[MODELS[model][0]] = {
            n: metric_stats(runs, lambda r, n=n: sum(r["metrics"]["accuracy"][t][str(n)] for t in TASKS) / 3)[
                0
            ]
            for n in lengths
        }
    plot = plot_dir / "niah.png"
    plot_lines(plot, series, title="S-NIAH accuracy (mean of the 3 tasks and the seeds)",
               xlabel="context length", ylabel="accuracy")
    return [
        f"Exact-match accuracy; trained at {lengths[0]} tokens:\n",
        format_table(rows, ["model", *columns]),
        "",
        f"![niah]({relative(plot, page_dir)})\n",
    ]
