"""Eager against ``torch.compile``d training steps of the demo's models (``mcrnn demo`` sizes).

One step is what training does: ``loss = model(ids, labels=ids).loss``, ``loss.backward()``, an AdamW
step and ``zero_grad``; the compiled variant wraps the model in ``torch.compile(fullgraph=True)`` (no
graph break, so one graph per direction). Per model, the first call of each variant (compilation) and
``--warmup`` more steps are excluded; then ``--rounds`` rounds alternate the two variants (``--steps``
steps each), and the table gives the median step time of each variant over all its timed steps and their
ratio, measured in the same process::

    python -m mcrnn.bench.compiled_step --models base grm ssc --threads 1
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch

from mcrnn.eval.demo import DemoSettings, model_config
from mcrnn.models import MCForCausalLM

#: the table's header (docs/benchmarks.md holds one produced by this module)
HEADER = "| model | eager ms/step | compiled ms/step | eager / compiled | first compiled step s |"


def training_step(model: torch.nn.Module, forward, optimizer: torch.optim.Optimizer, ids: torch.Tensor):  # noqa: ANN001, ANN201
    """One training step through ``forward`` (the model or its compiled wrapper)."""
    loss = forward(ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def time_model(name: str, args: argparse.Namespace) -> dict[str, float]:
    """Median eager and compiled step times (ms) of demo model ``name`` and the first compiled step (s)."""
    settings = DemoSettings()
    torch.manual_seed(0)
    model = MCForCausalLM(model_config(name, settings)).train()
    variants = {"eager": model, "compiled": copy.deepcopy(model)}  # the same initial weights
    forwards = {
        "eager": variants["eager"],
        "compiled": torch.compile(variants["compiled"], fullgraph=True, backend=args.backend),
    }
    optimizers = {
        key: torch.optim.AdamW(model.parameters(), lr=settings.lr) for key, model in variants.items()
    }
    ids = torch.randint(0, settings.vocab_size, (settings.batch_size, settings.seq_len))
    first = {}
    for key in variants:
        start = time.perf_counter()
        training_step(variants[key], forwards[key], optimizers[key], ids)
        first[key] = time.perf_counter() - start
        for _ in range(args.warmup):
            training_step(variants[key], forwards[key], optimizers[key], ids)
    times: dict[str, list[float]] = {key: [] for key in variants}
    for _ in range(args.rounds):
        for key in variants:
            for _ in range(args.steps):
                start = time.perf_counter()
                training_step(variants[key], forwards[key], optimizers[key], ids)
                times[key].append(time.perf_counter() - start)
    eager_ms, compiled_ms = (1e3 * statistics.median(times[key]) for key in ("eager", "compiled"))
    return {"eager": eager_ms, "compiled": compiled_ms, "first_compiled_s": first["compiled"]}


def table(rows: dict[str, dict[str, float]]) -> str:
    """The markdown table of :func:`time_model`'s results."""
    lines = [HEADER, "|---|---|---|---|---|"]
    for name, row in rows.items():
        eager, compiled, first = row["eager"], row["compiled"], row["first_compiled_s"]
        lines.append(f"| {name} | {eager:.1f} | {compiled:.1f} | {eager / compiled:.2f}x | {first:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["base", "grm", "ssc"], choices=("base", "grm", "ssc"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds alternating eager and compiled")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after the first one")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = {name: time_model(name, args) for name in args.models}
    policy = os.environ.get("OMP_WAIT_POLICY", "default")
    text = (
        f"torch {torch.__version__}, {args.threads} thread(s), OMP_WAIT_POLICY={policy}, "
        f"backend {args.backend}, {args.rounds} rounds x {args.steps} steps per variant\n\n{table(rows)}"
    )
    print(text)
    return text


if __name__ == "__main__":
    main()
