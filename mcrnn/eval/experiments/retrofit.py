"""``retrofit`` (issue 22): Memory Caching added to a model trained without it, read-only or with a
learned router, for length extrapolation on a single-needle passkey and on MQAR.

Per task and seed: a tiny transformers Qwen3.5-style model whose layers are all gated DeltaNet (no
attention, so recall must come from the recurrent state) is trained without caching at ``seq_len``
tokens, then frozen and scored on held-out data at 1x, 2x, 4x, 8x and 16x that length as trained (``none``),
and with :func:`mcrnn.retrofit.add_memory_caching` (segments of ``segment`` tokens,
``init="checkpoint"``, so the online memory is the host's): ``average``, ``grm`` and ``ssc`` (top-2)
with the query router, and ``grm`` with the learned router (``u = x W_u`` and the per-layer gate, zero
at init) trained for ``router_steps`` steps at ``seq_len`` with the backbone frozen
(:func:`mcrnn.retrofit.freeze_backbone`). Tasks: ``passkey`` (:mod:`mcrnn.data.passkey` with a random
key: one key-value needle at a uniform depth of random filler, the key asked at the end, so the needle
lies on average ``T/2`` tokens back) and ``mqar`` (``num_pairs`` pairs at the start, queries placed
uniformly, ``alpha=1``, so their gaps also grow with the length; Zoology's ``alpha=0.01`` keeps most
queries next to the pairs at any length).

Sizes. The aim, fixed before any MC read was scored: the no-caching backbone of seed 0 reaches >= 0.9 at
``seq_len`` and < 0.7 at 4x or 8x (the issue's lengths), within about 5 min of training per run on the
shared 2-core CPU. The probes (seed 0, ``none`` only, width 64, 2 layers, 4 heads, batch 16, held-out
accuracy at 1x/2x/4x/8x; "fixed" is the passkey with one marker token instead of a random key; chance is 2/V):

- random key, V=64, T=64: 600 steps at lr 3e-3: 0.02/0.02/0.02/0.02; 2000 steps: 0.03/0.05/0.01/0.03.
- fixed, V=64: T=64, 1500 steps at 1e-2: 0.03/0.04/0.03/0.03; T=16, 600 steps at 3e-3: 0.03/0.04/0.03/0.04.
- fixed, V=16, lr 3e-3: T=32, 2500 steps: 0.23/0.15/0.16/0.15; T=16, 1200 steps: 0.51/0.30/0.15/0.18;
  T=16, 3000 steps: 1.00/1.00/0.97/0.85 (no failure at 8x).
- fixed, V=32, T=16, 3000 steps: 1.00/1.00/1.00/1.00 (learned by step 300, solved at every length:
  nothing for MC to repair, like MQAR with one pair in the first run of this experiment).
- random key, V=32, T=16, 3000 steps: 0.30/0.23/0.25/0.16; its loss left the plateau at ~70% of
  training, so the defaults give it 5000 steps (about 4 min per run under load), with MQAR (2 pairs)
  at the same settings.
- that setting's seed-0 run (the experiment's first run, lengths up to 8x): none 1.00/1.00/1.00/0.76,
  above the < 0.7 aim at 8x, so 16x (256 tokens) was added to the evaluated lengths (training
  unchanged). Its MC reads had been scored by then (0.996-1.00 at 8x): the extension is of the
  evaluation only. Its JSON was then removed: training is deterministic, and the 16x run of seed 0
  reproduced every one of its numbers.

The first run of this experiment (MQAR only, 2 pairs, Zoology's alpha 0.01, T=64, 800 steps) was
inconclusive: the backbone stayed near chance (mean 0.10) and every MC read was within 0.012 of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from mcrnn.eval.experiments.runner import Run, recipe_options, size_tag

NAME = "retrofit"
MODEL_NAMES = ("passkey", "mqar")  # the tasks; a run's ``model`` is its task
VARIANTS = {
    "none": None,
    "average": {"aggregation": "average"},
    "grm+query": {"aggregation": "grm"},
    "ssc+query": {"aggregation": "ssc", "top_k": 2},
    "grm+learned": {"aggregation": "grm", "router": "learned"},
}


@dataclass(frozen=True)
class Settings:
    tasks: tuple[str, ...] = MODEL_NAMES
    vocab_size: int = 32
    random_key: bool = True
    num_pairs: int = 2
    mqar_alpha: float = 1.0
    seq_len: int = 16
    factors: tuple[int, ...] = (1, 2, 4, 8, 16)
    width: int = 64
    layers: int = 2
    heads: int = 4
    segment: int = 4
    steps: int = 5000
    router_steps: int = 300
    batch_size: int = 16
    lr: float = 3e-3
    router_lr: float = 1e-2
    eval_examples: int = 256


QUICK = Settings(
    num_pairs=2,
    seq_len=16,
    factors=(1, 2),
    width=16,
    heads=2,
    segment=4,
    steps=2,
    router_steps=2,
    batch_size=2,
    eval_examples=4,
)


def plan(settings: Settings, seeds: list[int]) -> list[Run]:
    size = size_tag(f"w{settings.width}", settings)
    return [Run(NAME, task, size, seed) for task in settings.tasks for seed in seeds]


def task_data(task: str, s: Settings, length: int, examples: int, seed: int):
    """``examples`` sequences of ``task`` (``passkey`` or ``mqar``) of ``length`` tokens."""
    from mcrnn.data import MQARConfig, MQARDataset, PasskeyConfig, PasskeyDataset

    if task == "passkey":
        return PasskeyDataset(PasskeyConfig(s.vocab_size, length, examples, seed, s.random_key))
    if task == "mqar":
        return MQARDataset(MQARConfig(s.vocab_size, s.num_pairs, length, examples, s.mqar_alpha, seed=seed))
    raise ValueError(f"unknown task {task!r}; choose from {MODEL_NAMES}")


def host_model(s: Settings, seed: int):
    """The tiny Qwen3.5-style model: ``layers`` gated DeltaNet layers (``heads`` key and value heads of
    ``width / heads``), no attention layer."""
    import transformers

    head_dim = s.width // s.heads
    names = ("linear_num_key_heads", "linear_num_value_heads", "num_attention_heads", "num_key_value_heads")
    heads = dict.fromkeys(names, s.heads)
    dims = {"linear_key_head_dim": head_dim, "linear_value_head_dim": head_dim, "head_dim": head_dim}
    config = transformers.AutoConfig.for_model(
        "qwen3_5_text",
        vocab_size=s.vocab_size,
        hidden_size=s.width,
        num_hidden_layers=s.layers,
        intermediate_size=2 * s.width,
        layer_types=["linear_attention"] * s.layers,
        pad_token_id=0,
        eos_token_id=0,
        bos_token_id=0,
        **heads,
        **dims,
    )
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(config)


def _train(model, dataset, steps: int, s: Settings, lr: float, seed: int, device: str):
    from mcrnn.train import train

    options = recipe_options(steps=steps, batch_size=s.batch_size, lr=lr, seed=seed, device=device)
    return train(model, dataset, options)


def _accuracy(model, task: str, s: Settings, seed: int) -> dict[str, float]:
    """Held-out accuracy at each ``factor * seq_len`` (keyed by the length)."""
    from mcrnn.train import evaluate_lm

    out = {}
    for factor in s.factors:
        length = factor * s.seq_len
        held_out = task_data(task, s, length, s.eval_examples, 2000 + seed)
        out[str(length)] = evaluate_lm(model, held_out, batch_size=32)["accuracy"]
    return out


def _train_router(model, task: str, s: Settings, seed: int, device: str) -> dict:
    """Train the learned routers alone (backbone frozen) at ``seq_len``; their size, time and gates."""
    import time

    from mcrnn.retrofit import freeze_backbone

    routers = freeze_backbone(model)
    data = task_data(task, s, s.seq_len, s.router_steps * s.batch_size, 3000 + seed)
    started = time.perf_counter()
    _train(model, data, s.router_steps, s, s.router_lr, seed, device)
    gates = [round(g, 4) for p in routers if p.dim() == 1 for g in p.detach().tolist()]
    seconds = time.perf_counter() - started
    size = sum(p.numel() for p in routers)
    return {"router_seconds": seconds, "router_params": size, "router_gates": gates}


def work(run: Run, s: Settings, device: str) -> dict:
    import time

    from mcrnn.retrofit import add_memory_caching, remove_memory_caching

    task = run.model
    model = host_model(s, run.seed)
    started = time.perf_counter()
    data = task_data(task, s, s.seq_len, s.steps * s.batch_size, 1000 + run.seed)
    _train(model, data, s.steps, s, s.lr, run.seed, device)
    params = sum(p.numel() for p in model.parameters())
    metrics = {"train_seconds": time.perf_counter() - started, "params": params}
    accuracy = {}
    for variant, options in VARIANTS.items():
        if options is not None:
            add_memory_caching(model, segment_size=s.segment, **options)
        if variant == "grm+learned":
            metrics.update(_train_router(model, task, s, run.seed, device))
        accuracy[variant] = _accuracy(model.eval(), task, s, run.seed)
        if options is not None:
            remove_memory_caching(model)
    return {**metrics, "accuracy": accuracy}


def verdict(variant: tuple[float, float, int], base: tuple[float, float, int]) -> str:
    """``+0.120 helps`` / ``-0.050 within noise`` / ``hurts``: the mean change from ``none`` counts only
    when it is larger than the sum of the two standard deviations (the margin rule)."""
    change = variant[0] - base[0]
    if abs(change) <= variant[1] + base[1]:
        return f"{change:+.3f} within noise"
    return f"{change:+.3f} {'helps' if change > 0 else 'hurts'}"


def summary(stats: dict[str, dict[int, tuple[float, float, int]]], lengths: list[int]) -> str:
    """Per MC read, the lengths where it helps or hurts by the margin rule ("within noise" elsewhere)."""
    parts = []
    for variant in VARIANTS:
        if variant == "none":
            continue
        found = {"helps": [], "hurts": []}
        for n in lengths:
            word = verdict(stats[variant][n], stats["none"][n]).split(" ", 1)[1]
            if word in found:
                found[word].append(f"T={n}")
        said = [f"{word} at {', '.join(at)}" for word, at in found.items() if at]
        parts.append(f"`{variant}` {'; '.join(said) if said else 'within noise at every length'}")
    return ". ".join(parts) + "."


def task_section(task: str, results: list[dict], plot_dir: Path, page_dir: Path) -> list[str]:
    """One task's table (accuracy per variant and length), its verdicts against ``none``, and a plot."""
    from mcrnn.eval.experiments.page import relative
    from mcrnn.eval.experiments.stats import cell, metric_stats
    from mcrnn.eval.report import format_table, plot_lines

    lengths = sorted({int(n) for r in results for n in r["metrics"]["accuracy"]["none"]})
    columns = [f"T={n}" for n in lengths]

    def accuracy(variant: str, length: int) -> tuple[float, float, int]:
        return metric_stats(results, lambda r: r["metrics"]["accuracy"][variant][str(length)])

    stats = {v: {n: accuracy(v, n) for n in lengths} for v in VARIANTS}
    rows = [{"read": v, **{f"T={n}": cell(stats[v][n]) for n in lengths}} for v in VARIANTS]
    changes = [
        {"read": v, **{f"T={n}": verdict(stats[v][n], stats["none"][n]) for n in lengths}}
        for v in VARIANTS
        if v != "none"
    ]
    plot = plot_dir / f"retrofit-{task}.png"
    series = {v: {n: stats[v][n][0] for n in lengths} for v in VARIANTS}
    plot_lines(plot, series, title=f"{task} accuracy vs length, MC added after training", xlabel="length",
               ylabel="accuracy")
    gates = [abs(g) for r in results for g in r["metrics"].get("router_gates", [])]
    return [
        f"### {task}\n",
        format_table(rows, ["read", *columns]),
        "",
        "Change of the mean from `none` (helps / hurts only when larger than the sum of the two stds):\n",
        format_table(changes, ["read", *columns]),
        "",
        f"Backbone (`none`): {stats['none'][lengths[0]][0]:.3f} at T={lengths[0]} (the aim: >= 0.9), "
        + ", ".join(f"{stats['none'][n][0]:.3f} at T={n}" for n in lengths[1:])
        + " (the aim: < 0.7 at 4x or 8x).\n",
        f"In words: {summary(stats, lengths)}\n",
        f"Learned gates |gamma| after router training (per head, all runs): max {max(gates, default=0):.3f}."
        "\n",
        f"![retrofit {task}]({relative(plot, page_dir)})\n",
    ]


def section(results: list[dict], plot_dir: Path, page_dir: Path) -> list[str]:
    """Per task: accuracy per variant (rows) and evaluation length (columns), verdicts, a plot."""
    s = results[0]["settings"]
    lines = [
        f"Held-out accuracy ({s['eval_examples']} sequences per length; vocabulary {s['vocab_size']}; "
        f"passkey: one key-value needle at a uniform depth of random filler, its key asked at the end; MQAR: "
        f"{s['num_pairs']} pairs, queries placed with alpha={s['mqar_alpha']}) of a Qwen3.5-style gated "
        f"DeltaNet model ({s['layers']} layers, width {s['width']}, {s['heads']} heads, no attention) "
        f"trained without caching at T={s['seq_len']} ({s['steps']} steps, lr {s['lr']}), frozen, read with "
        f"MC added afterwards (segments of {s['segment']}, checkpoint init; the learned router trained "
        f"{s['router_steps']} steps at T={s['seq_len']} with lr {s['router_lr']}, backbone frozen).\n",
    ]
    for task in MODEL_NAMES:
        ran = [r for r in results if r["model"] == task]
        if ran:
            lines += task_section(task, ran, plot_dir, page_dir)
    lines.append(
        "The published peer result this is set against: a learned read-out router on a frozen pretrained "
        "Mamba2 lifted 8K passkey retrieval from 0.74 to 0.99, while its fixed aggregations collapsed at "
        "long context, and multi-key recall did not improve.\n"
    )
    return lines
