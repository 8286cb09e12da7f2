"""The results page: one section per experiment, built only from the result JSONs under ``out``.

Each section says what ran (settings, the exact commands, the machine, the wall time) and shows the
experiment's tables (every number the mean ± sample std over the seeds, with the seed count) and plots;
runs of the current settings that failed are listed with their error. PNG plots go to a folder named
after the page (next to it: ``docs/results.md`` -> ``docs/results/``).
"""

from __future__ import annotations

import os
from pathlib import Path

from mcrnn.eval.experiments import EXPERIMENTS, experiment_module
from mcrnn.eval.experiments.runner import at_settings, by_settings, load_failures, load_results
from mcrnn.train.checkpoint import atomic_write_text

HEADER = """# Experiment results

Written by `mcrnn experiment report` from the per-run JSONs of `mcrnn experiment NAME` (see the
commands in each section; `mcrnn experiment --help`). Every number is the mean ± sample standard
deviation over the seeds, with the number of seeds in parentheses; no seed is dropped. Each section
shows one group of settings: the current defaults first, with their failed runs, then each older group
of an experiment whose defaults changed, without its failures. The `ordering` table reads only the
current defaults. The per-run JSONs of this page are `results/experiments/` in the repository:
`mcrnn experiment report --out results/experiments --page docs/results.md` writes it again.

Sizes: the defaults are small, sized from step times on the 2-core CPU VM with one torch thread per
process so that all experiments could run in one session two at a time (the issue's budget was 30-45
minutes each); each section's wall time is what its runs took on the machine it names, mostly shared
with other jobs. The size flags (`--widths`, `--width`, `--steps`, `--seq-len`, `--batch-size`, ...)
and `--device cuda` scale them up. At these sizes the models are far from converged: read the tables
as what these settings give, not as the paper's numbers.

History of the settings (no setting was changed to favour a model): `recall` first ran 8 pairs at
widths 16/32 for 250 steps, and every model, the Transformer included, stayed at chance (kept below);
the defaults then became the demo's task (16 pairs in 64 tokens), where the demo had shown the
Transformer++ with a short convolution solving it, at 1000 steps (a 2000-step choice was stopped after
two runs: it would not have finished in the session). MQAR and S-NIAH have a long loss plateau: the
demo (`mcrnn demo`, README) trains the same task for 4000 steps, where MC beats its base in every seed;
at 1000 steps most recurrent runs are still on the plateau. `niah` stayed at 0.00 for every model at
its budget: it shows nothing about the models.
"""


def write_page(out: Path, page: Path, current: dict[str, object] | None = None) -> None:
    """Write ``page`` (Markdown) and its plots from the results under ``out``, atomically.

    ``current`` maps an experiment to the settings the page leads with (a Settings dataclass; default:
    the experiment's defaults, a field left None matching any run): its runs and its failed runs come
    first; every other group of settings gets its own section below, without its failures (rerunning
    its command retries them). ``ordering`` reads only the current settings."""
    trained = [name for name in EXPERIMENTS if hasattr(experiment_module(name), "Settings")]
    current = {name: experiment_module(name).Settings() for name in trained} | (current or {})
    lines = [HEADER]
    for name in EXPERIMENTS:
        module = experiment_module(name)
        lines.append(f"## {name}\n")
        lines.append(module.__doc__.strip().split("\n\n")[0].replace("\n", " ") + "\n")
        if name == "ordering":
            lines += module.section(out, current)
            continue
        lines += experiment_sections(module, out, page, current[name])
    page.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(page, "\n".join(lines).rstrip() + "\n")


def experiment_sections(module, out: Path, page: Path, current: object) -> list[str]:
    """One experiment's part of the page: the runs at ``current`` with their failures, then one section
    per older group of settings (plots of the older groups in ``settings-N`` folders)."""
    results, failures = load_results(out, module.NAME), load_failures(out, module.NAME)
    ours = [f for f in failures if "settings" in f and at_settings(f["settings"], current)]
    runs, older = by_settings(results, current)
    if not runs and not ours and not older:
        return ["Not run yet.\n"]
    plot_dir = page.parent / page.stem
    lines = []
    if older:
        lines.append("### Current settings\n")
    if runs or ours:
        lines += run_facts(runs, ours) + absent_runs(module, runs, ours)
        lines += module.section(runs, plot_dir, page.parent) if runs else []
    else:
        lines.append("No run at the current settings yet (the older settings below are not compared).\n")
    for index, group in enumerate(older, 1):
        lines.append(f"### Older settings {index} of {len(older)}\n")
        lines += run_facts(group, []) + module.section(group, plot_dir / f"settings-{index + 1}", page.parent)
    return lines


def run_facts(results: list[dict], failures: list[dict]) -> list[str]:
    """Settings, commands, machines, wall time and failures of one experiment's runs."""
    lines = []
    settings = {str(r["settings"]): r["settings"] for r in results}
    for values in settings.values():
        lines.append("Settings: " + ", ".join(f"`{k}={v}`" for k, v in values.items()) + "\n")
    commands = sorted({r["command"] for r in [*results, *failures]})
    lines.append("Commands (each run records the one that made it):\n")
    lines += [f"    {c}" for c in commands] + [""]
    machines = {str(r["machine"]): r["machine"] for r in results}
    for m in machines.values():
        gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
        lines.append(
            f"Machine: {m['cpu']} ({m['cpu_count']} cores, {m['torch_threads']} torch threads{gpu}), "
            f"{m['platform']}, torch {m['torch']}.\n"
        )
    if results:
        total = sum(r["wall_seconds"] for r in results)
        finished = sorted(r["finished"] for r in results)
        lines.append(
            f"Wall time: {total / 60:.1f} min over {len(results)} runs (sum of the runs; "
            f"{min(r['wall_seconds'] for r in results):.0f}-{max(r['wall_seconds'] for r in results):.0f} s "
            f"each), finished {finished[0]} to {finished[-1]}.\n"
        )
    if failures:
        lines.append(f"Failed runs ({len(failures)}; rerunning the command retries them):\n")
        lines += [f"- `{f['key']}`: {f['error']}" for f in failures] + [""]
    return lines


def absent_runs(module, results: list[dict], failures: list[dict]) -> list[str]:
    """The runs of the recorded settings and seeds that neither finished nor failed (not run yet)."""
    seeds = sorted({r["seed"] for r in [*results, *failures]})
    present = {r["key"] for r in [*results, *failures]}
    absent = []
    for values in {str(r["settings"]): r["settings"] for r in results}.values():
        settings = module.Settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
        absent += [run.key for run in module.plan(settings, seeds) if run.key not in present]
    if not absent:
        return []
    return [f"Not run yet ({len(absent)} runs; the command above runs them): " + ", ".join(absent) + "\n"]


def relative(path: Path, start: Path) -> str:
    """``path`` relative to the page's folder, for a Markdown link."""
    return os.path.relpath(path, start)
