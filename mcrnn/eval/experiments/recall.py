"""``recall`` (paper Fig. 5, Zoology style): MQAR accuracy against model width.

Models: the linear memory as the base RNN, + GRM, + SSC (top-2) and Log-Linear++; one deep memory
(DLA) as the base RNN, + GRM, + Soup, + SSC and Log-Linear++; and the Transformer++, plain and with the
recurrent models' short convolution on q, k, v (``attention_conv_size=4``: the demo found that only this
one leaves the MQAR plateau within a CPU budget). Each is trained on fresh MQAR sequences (``num_pairs``
key-value pairs in ``seq_len`` tokens) and scored on held-out ones (accuracy of the queried values).
Learning rates are the demo's (its sweep): 1e-2 for the recurrent models, 3e-3 for the Transformer.

Default sizes (chosen for the CPU budget of one session, before any run at them): the demo's task
(16 pairs in 64 tokens, vocabulary 64), 1000 steps of 16 sequences. Each family runs at its own widths
(head dims = width / 4; a matrix memory's state grows as width^2 / heads): the linear memory at 16 and
32, the deep memory (2-3x the cost per step on the CPU) at 32, the Transformer++ with the short
convolution at 32 and 64 (the demo: at width 64 it solves this task in ~500 steps) and the plain one at
64. The first defaults (8 pairs, widths 16 and 32, 250 steps) left every model at chance; a second
choice (widths 32/64, 2000 steps) was stopped after 2 runs because it would not have finished in the
session.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from mcrnn.eval.experiments.runner import Run, model_config, size_tag, train_model

NAME = "recall"
MODEL_NAMES = ("base", "grm", "ssc", "log", "dla-base", "dla-grm", "dla-soup", "dla-ssc", "dla-log",
               "transformer", "transformer-conv")  # fmt: skip


@dataclass(frozen=True)
class Settings:
    vocab_size: int = 64
    num_pairs: int = 16
    seq_len: int = 64
    widths: tuple[int, ...] = (16, 32)
    deep_widths: tuple[int, ...] = (32,)
    attention_widths: tuple[int, ...] = (32, 64)
    plain_attention_widths: tuple[int, ...] = (64,)
    layers: int = 2
    heads: int = 4
    segment: int = 16
    steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-2
    transformer_lr: float = 3e-3
    eval_examples: int = 256


QUICK = Settings(num_pairs=2, seq_len=16, widths=(8,), deep_widths=(8,), attention_widths=(8,),
                 plain_attention_widths=(8,), heads=2, segment=4, steps=2, batch_size=2,
                 eval_examples=4)  # fmt: skip


def plan(settings: Settings, seeds: list[int]) -> list[Run]:
    return [
        Run(NAME, model, size_tag(f"w{width}", settings), seed)
        for model in MODEL_NAMES
        for width in family_widths(model, settings)
        for seed in seeds
    ]


def family_widths(model: str, settings: Settings) -> tuple[int, ...]:
    """The widths ``model`` runs at: its family's (see the module doc)."""
    if model.startswith("dla"):
        return settings.deep_widths
    if model == "transformer-conv":
        return settings.attention_widths
    if model == "transformer":
        return settings.plain_attention_widths
    return settings.widths


def width_of(run_size: str) -> int:
    """The width in a size tag ``w<width>.<hash>``."""
    return int(run_size.split(".")[0][1:])


def work(run: Run, s: Settings, device: str) -> dict:
    from mcrnn.data import MQARConfig, MQARDataset
    from mcrnn.train import evaluate_lm

    width = width_of(run.size)
    config = model_config(run.model, vocab_size=s.vocab_size, width=width, layers=s.layers, heads=s.heads,
                          segment=s.segment)  # fmt: skip
    mqar = MQARConfig(s.vocab_size, s.num_pairs, s.seq_len, s.steps * s.batch_size, seed=1000 + run.seed)
    lr = s.transformer_lr if run.model == "transformer" else s.lr
    model, trained, seconds = train_model(config, MQARDataset(mqar), steps=s.steps, batch_size=s.batch_size,
                                          lr=lr, seed=run.seed, device=device)  # fmt: skip
    held_out = replace(mqar, num_examples=s.eval_examples, seed=2000 + run.seed)
    scores = evaluate_lm(model, MQARDataset(held_out), batch_size=64)
    return {
        "width": width, "accuracy": scores["accuracy"], "eval_loss": scores["loss"],
        "params": sum(p.numel() for p in model.parameters()), "lr": lr, "train_seconds": seconds,
        "train_tokens_per_second": trained.tokens_per_second,
    }  # fmt: skip


def section(results: list[dict], plot_dir: Path, page_dir: Path) -> list[str]:
    """Accuracy per model (rows) and width (columns), and a plot of it."""
    from mcrnn.eval.experiments.page import relative
    from mcrnn.eval.experiments.runner import MODELS
    from mcrnn.eval.experiments.stats import by_group, cell, metric_stats
    from mcrnn.eval.report import format_table, plot_lines

    widths = sorted({r["metrics"]["width"] for r in results})
    groups = by_group(results, lambda r: (r["model"], r["metrics"]["width"]))
    rows, series = [], {}
    for model in MODEL_NAMES:
        stats = {w: metric_stats(groups[(model, w)], lambda r: r["metrics"]["accuracy"])
                 for w in widths if (model, w) in groups}  # fmt: skip
        if not stats:
            continue
        params = {w: groups[(model, w)][0]["metrics"]["params"] for w in stats}
        rows.append({"model": MODELS[model][0], **{f"width {w}": cell(stats.get(w)) for w in widths},
                     "params": " / ".join(f"{params[w]:,}" for w in sorted(params))})  # fmt: skip
        series[MODELS[model][0]] = {w: stats[w][0] for w in stats}
    plot = plot_dir / "recall.png"
    plot_lines(plot, series, title="MQAR accuracy vs width (mean over seeds)", xlabel="width",
               ylabel="accuracy")  # fmt: skip
    s = results[0]["settings"]
    chance = 1 / (s["vocab_size"] - s["vocab_size"] // 2)
    return [
        f"MQAR accuracy on held-out sequences ({s['num_pairs']} pairs in {s['seq_len']} tokens; "
        f"guessing a value uniformly scores {chance:.3f}):\n",
        format_table(rows, ["model", *(f"width {w}" for w in widths), "params"]),
        "",
        f"![recall]({relative(plot, page_dir)})\n",
    ]
