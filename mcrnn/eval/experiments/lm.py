"""``lm`` (paper Table 1): character-level language modelling at equal parameter count, with throughput.

Byte-level tinyshakespeare (the first 90% trains, the last 10% is the validation split). Models: the
linear memory as the base RNN, + GRM, + SSC (top-2), Log-Linear++; DLA as the base RNN and + Soup; and
the Transformer++. Parameters are equalised by the SwiGLU width: every model's ``intermediate_size`` is
the one that brings it closest to the linear base RNN's count (the table shows each count and its ratio
to the target). Training throughput is the training loop's tokens per second (optimizer steps
included); ``forward tok/s @long`` is one no-grad forward pass over ``long_len`` tokens, where the
cost of reading the cached memories shows. Learning rates as in ``recall``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mcrnn.eval.experiments.runner import (
    Run,
    check_data,
    count_params,
    matched_config,
    model_config,
    size_tag,
    train_model,
)

NAME = "lm"
MODEL_NAMES = ("base", "grm", "ssc", "log", "dla-base", "dla-soup", "transformer", "transformer-conv")


@dataclass(frozen=True)
class Settings:
    data: str | None = None  # the text file: --data, required (an input, not a setting of the page)
    seq_len: int = 128
    width: int = 48
    layers: int = 2
    heads: int = 4
    segment: int = 32
    steps: int = 150
    batch_size: int = 16
    lr: float = 1e-2
    transformer_lr: float = 3e-3
    eval_examples: int = 256
    long_len: int = 2048


QUICK = Settings(seq_len=16, width=8, heads=2, segment=8, steps=2, batch_size=2, eval_examples=2, long_len=32)


def plan(settings: Settings, seeds: list[int]) -> list[Run]:
    size = size_tag(f"w{settings.width}", settings)
    return [Run(NAME, model, size, seed) for model in MODEL_NAMES for seed in seeds]


def sizes(s: Settings) -> dict:
    """The model sizes shared by every model (byte vocabulary)."""
    return {"vocab_size": 257, "width": s.width, "layers": s.layers, "heads": s.heads, "segment": s.segment}


def work(run: Run, s: Settings, device: str) -> dict:
    from mcrnn.data import TextDataset
    from mcrnn.eval.harness import eval_perplexity

    check_data(s.data)
    target = count_params(model_config("base", **sizes(s)))
    config = matched_config(run.model, target, **sizes(s))
    lr = s.transformer_lr if run.model == "transformer" else s.lr
    train_data = TextDataset(s.data, s.seq_len, split="train")
    model, trained, seconds = train_model(
        config, train_data, steps=s.steps, batch_size=s.batch_size, lr=lr, seed=run.seed, device=device
    )
    val = TextDataset(s.data, s.seq_len, split="val")
    scores = eval_perplexity(model, val, batch_size=16, max_batches=max(1, s.eval_examples // 16))
    params = sum(p.numel() for p in model.parameters())
    return {
        "val_perplexity": scores["perplexity"],
        "val_loss": scores["loss"],
        "val_tokens": scores["tokens"],
        "params": params,
        "param_target": target,
        "param_ratio": params / target,
        "intermediate_size": config.intermediate_size,
        "lr": lr,
        "train_seconds": seconds,
        "train_tokens_per_second": trained.tokens_per_second,
        "long_forward_tokens_per_second": forward_throughput(model, s.long_len),
    }


@torch.no_grad()
def forward_throughput(model, length: int, repeats: int = 2) -> float:
    """Tokens per second of a no-grad forward pass over one sequence of ``length`` tokens (best of
    ``repeats`` after a warm-up pass)."""
    device = next(model.parameters()).device
    model.eval()
    ids = torch.randint(0, model.config.vocab_size, (1, length), device=device)
    model(input_ids=ids, use_cache=False)
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        model(input_ids=ids, use_cache=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return length / best


def section(results: list[dict], plot_dir: Path, page_dir: Path) -> list[str]:
    """Perplexity, parameters and throughputs per model; a bar plot of the perplexity."""
    from mcrnn.eval.experiments.page import relative
    from mcrnn.eval.experiments.runner import MODELS
    from mcrnn.eval.experiments.stats import by_group, cell, metric_stats
    from mcrnn.eval.report import format_table, plot_bars

    groups = by_group(results, lambda r: r["model"])
    long_len = results[0]["settings"]["long_len"]
    rows, labels, means = [], [], []
    for model in MODEL_NAMES:
        if model not in groups:
            continue
        runs = groups[model]
        m = runs[0]["metrics"]
        ppl = metric_stats(runs, lambda r: r["metrics"]["val_perplexity"])
        rows.append(
            {
                "model": MODELS[model][0],
                "val perplexity": cell(ppl, 3),
                "params (ratio to target)": f"{m['params']:,} ({m['param_ratio']:.3f})",
                "train tok/s": cell(metric_stats(runs, lambda r: r["metrics"]["train_tokens_per_second"]), 0),
                f"forward tok/s @{long_len}": cell(
                    metric_stats(runs, lambda r: r["metrics"]["long_forward_tokens_per_second"]), 0
                ),
            }
        )
        labels.append(model)
        means.append(ppl[0])
    plot = plot_dir / "lm.png"
    plot_bars(
        plot, labels, means, title="tinyshakespeare (bytes): validation perplexity", ylabel="perplexity"
    )
    target = results[0]["metrics"]["param_target"]
    return [
        f"Validation perplexity (bytes) after training; parameter target {target:,} (the linear base RNN):\n",
        format_table(rows, list(rows[0])),
        "",
        f"![lm]({relative(plot, page_dir)})\n",
    ]
