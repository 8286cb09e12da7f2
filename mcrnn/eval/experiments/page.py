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
from mcrnn.eval.experiments.stats import by_group
from mcrnn.eval.report import format_table
from mcrnn.utils.files import atomic_write_text

HEADER = """# Experiment results

Written by `mcrnn experiment report` from the per-run JSONs committed in `docs/results/runs/<experiment>/`
(one small file per run: its settings, seed, metrics, wall time, machine, command and git commit), and
from nothing else: `tests/eval/test_results_page.py` checks that this page is what the report makes of
them. The numbers of the page before them (recall at 1000 steps, niah, lm and post-training, run on
2026-11-30) cannot be regenerated, since their JSONs stayed on the machine that ran them, so this page
holds only what is committed.

Every number is the mean ± sample standard deviation over the seeds, with the number of seeds in
parentheses; no seed is dropped. Each section shows one group of settings: the current defaults first,
with their failed runs and the runs still missing (a cell aims at seeds 0, 1 and 2; the time estimate
is the mean wall time of the cell's finished runs, else of its model's), then each older group of an
experiment whose defaults changed. The `ordering` table and the routing statement read only the current
defaults. `mcrnn experiment NAME` run from a checkout writes its runs here; `mcrnn experiment report`
rewrites this page. Wall times are what each run took on the machine its section names, which was often
shared with other jobs (the first recall runs, 2026-12-07: a 2-core VM running 5-7 other processes, one
torch thread per run), so the estimates are upper bounds for an idle machine.
"""

#: the seeds every cell aims at; the page lists what is missing of them
SEEDS_WANTED = (0, 1, 2)


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
        lines += run_facts(runs, ours) + missing_runs(module, runs, ours)
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
    commits = sorted({r.get("commit") or "not recorded" for r in results})
    if commits:
        lines.append(
            "Code: " + ", ".join(f"`{c}`" for c in commits) + " (the git commit each run recorded).\n"
        )
    if failures:
        lines.append(f"Failed runs ({len(failures)}; rerunning the command retries them):\n")
        lines += [f"- `{f['key']}`: {f['error']}" for f in failures] + [""]
    return lines


def missing_runs(module, results: list[dict], failures: list[dict]) -> list[str]:
    """The runs of the recorded settings at :data:`SEEDS_WANTED` (and any other recorded seed) that neither
    finished nor failed, as a table of cells with the seeds they miss and the estimated time of each."""
    seeds = sorted({*SEEDS_WANTED, *(r["seed"] for r in [*results, *failures])})
    present = {r["key"] for r in [*results, *failures]}
    missing = []
    for values in {str(r["settings"]): r["settings"] for r in results}.values():
        settings = module.Settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
        missing += [run for run in module.plan(settings, seeds) if run.key not in present]
    if not missing:
        return []
    cells = by_group(missing, lambda run: (run.model, run.size))
    rows, total, untimed = [], 0.0, 0
    everything = sum(r["wall_seconds"] for r in results) / len(results)
    for (model, size), runs in cells.items():
        seconds = estimated_seconds(results, model, size)
        untimed += 0 if seconds else len(runs)
        total += (seconds or everything) * len(runs)
        minutes = f"{seconds / 60:.1f}" if seconds else f"~{everything / 60:.1f}"
        seeds_missing = ", ".join(str(r.seed) for r in runs)
        rows.append({"model": model, "size": size.split(".")[0], "seeds missing": seeds_missing})
        rows[-1]["minutes each"] = minutes
    guess = f"; ~: no run of the model yet, the mean of all {len(results)} finished runs" if untimed else ""
    command = f"`mcrnn experiment {module.NAME} --seeds {' '.join(map(str, seeds))}` runs them"
    return [
        f"Missing runs ({len(missing)} in {len(cells)} cells; about {total / 3600:.1f} h on one process at "
        f"the measured times{guess}; {command}):\n",
        format_table(rows, list(rows[0])),
        "",
    ]


def estimated_seconds(results: list[dict], model: str, size: str) -> float | None:
    """The mean wall time of the finished runs of ``(model, size)``, else of ``model``; None without any."""
    for same in (lambda r: r["model"] == model and r["size"] == size, lambda r: r["model"] == model):
        times = [r["wall_seconds"] for r in results if same(r)]
        if times:
            return sum(times) / len(times)
    return None


def relative(path: Path, start: Path) -> str:
    """``path`` relative to the page's folder, for a Markdown link."""
    return os.path.relpath(path, start)
