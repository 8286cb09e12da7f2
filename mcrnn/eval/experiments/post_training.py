"""``post-training`` (paper Sec. 4.3): Memory Caching added after training, for length extrapolation.

Models trained *without* caching at ``seq_len`` tokens (the linear memory and DLA as base RNNs) are
scored (byte perplexity, validation split of tinyshakespeare) at 1x, 2x, 4x and 8x the training
length, as trained and with post-training ``average`` caching: the same weights, the config switched
to ``segment_size=segment, aggregation="average"`` (:func:`mcrnn.eval.harness.with_average_caching`,
which loads the weights strictly; each run records that the switched model has exactly the trained
parameters). For reference a linear + GRM model trained *with* caching is scored the same way. The paper
gives no numbers for this.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Subset

from mcrnn.eval.experiments.runner import Run, check_data, model_config, size_tag, train_model

NAME = "post-training"
MODEL_NAMES = ("base", "dla-base", "grm")


@dataclass(frozen=True)
class Settings:
    data: str | None = None  # the text file: --data, required (an input, not a setting of the page)
    seq_len: int = 64
    factors: tuple[int, ...] = (1, 2, 4, 8)
    width: int = 48
    layers: int = 2
    heads: int = 4
    segment: int = 16
    steps: int = 200
    batch_size: int = 16
    lr: float = 1e-2
    eval_examples: int = 64


QUICK = Settings(
    seq_len=16, factors=(1, 2), width=8, heads=2, segment=8, steps=2, batch_size=2, eval_examples=2
)


def plan(settings: Settings, seeds: list[int]) -> list[Run]:
    size = size_tag(f"w{settings.width}", settings)
    return [Run(NAME, model, size, seed) for model in MODEL_NAMES for seed in seeds]


def work(run: Run, s: Settings, device: str) -> dict:
    from mcrnn.data import TextDataset
    from mcrnn.eval.harness import eval_extrapolation, with_average_caching

    check_data(s.data)
    config = model_config(
        run.model, vocab_size=257, width=s.width, layers=s.layers, heads=s.heads, segment=s.segment
    )
    train_data = TextDataset(s.data, s.seq_len, split="train")
    model, trained, seconds = train_model(
        config, train_data, steps=s.steps, batch_size=s.batch_size, lr=s.lr, seed=run.seed, device=device
    )

    def val(length: int):
        data = TextDataset(s.data, length, split="val")
        return Subset(data, range(min(s.eval_examples, len(data))))

    metrics = {
        "params": sum(p.numel() for p in model.parameters()),
        "train_seconds": seconds,
        "train_tokens_per_second": trained.tokens_per_second,
        "trained_with_caching": run.model == "grm",
    }
    average = None
    if run.model != "grm":  # trained without caching: also scored with post-training average caching
        average = s.segment
        trained_weights = model.state_dict()
        switched_model = with_average_caching(model, s.segment)
        switched = switched_model.state_dict()
        metrics["switched_params"] = sum(p.numel() for p in switched_model.parameters())
        metrics["switched_same_weights"] = switched.keys() == trained_weights.keys() and all(
            torch.equal(switched[name], tensor) for name, tensor in trained_weights.items()
        )
    scores = eval_extrapolation(
        model, val, s.seq_len, factors=s.factors, average_segment_size=average, metric="perplexity"
    )
    metrics["perplexity"] = {name: {str(n): v for n, v in per.items()} for name, per in scores.items()}
    return metrics


def variants(results: list[dict]) -> dict[str, list[tuple[str, str]]]:
    """Table row label -> the (model, variant) it shows."""
    from mcrnn.eval.experiments.runner import MODELS

    rows = {}
    for model in MODEL_NAMES:
        if not any(r["model"] == model for r in results):
            continue
        if model == "grm":
            rows[f"{MODELS[model][0]} (trained with caching)"] = (model, "model")
        else:
            rows[f"{MODELS[model][0]}, no caching"] = (model, "model")
            rows[f"{MODELS[model][0]} + post-training average"] = (model, "average")
    return rows


def section(results: list[dict], plot_dir: Path, page_dir: Path) -> list[str]:
    """Perplexity per length for every (model, variant); a plot of it."""
    from mcrnn.eval.experiments.page import relative
    from mcrnn.eval.experiments.stats import by_group, cell, metric_stats
    from mcrnn.eval.report import format_table, plot_lines

    groups = by_group(results, lambda r: r["model"])
    lengths = sorted({int(n) for r in results for n in r["metrics"]["perplexity"]["model"]})
    rows, series = [], {}
    for label, (model, variant) in variants(results).items():
        runs = groups[model]
        stats = {
            n: metric_stats(runs, lambda r, v=variant, n=n: r["metrics"]["perplexity"][v][str(n)])
            for n in lengths
        }
        rows.append({"model": label, **{f"T={n}": cell(stats[n], 2) for n in lengths}})
        series[label] = {n: stats[n][0] for n in lengths}
    switched = [r for r in results if "switched_params" in r["metrics"]]
    same = all(
        r["metrics"]["switched_same_weights"] and r["metrics"]["switched_params"] == r["metrics"]["params"]
        for r in switched
    )
    plot = plot_dir / "post_training.png"
    plot_lines(
        plot, series, title="byte perplexity vs evaluation length", xlabel="length", ylabel="perplexity"
    )
    return [
        f"Validation byte perplexity at each length (trained at {lengths[0]}):\n",
        format_table(rows, ["model", *(f"T={n}" for n in lengths)]),
        "",
        f"Switching to average caching added no parameters and kept every weight: {'yes' if same else 'NO'} "
        f"(checked in each of the {len(switched)} runs).\n",
        f"![post-training]({relative(plot, page_dir)})\n",
    ]
