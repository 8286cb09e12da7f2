"""The README's demo table is generated from the committed seed sweeps (issue 24.3)."""

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from mcrnn.cli import main
from mcrnn.eval.demo import DEMO_MODELS, DemoSettings, summarize_seeds
from mcrnn.eval.demo_table import BEGIN, END, load_summaries, readme_block, render_table

ROOT = Path(__file__).parents[2]
SWEEPS = ROOT / "docs" / "results" / "demo"


def test_readme_demo_table_is_what_the_command_prints():
    assert readme_block(ROOT / "README.md") == render_table(SWEEPS), (
        "README.md's demo table is stale: mcrnn demo --table docs/results/demo --write-docs README.md"
    )


def test_committed_sweeps_are_the_current_demo_at_one_and_two_threads_over_ten_seeds():
    """The table speaks for ``make demo`` only if its sweeps ran the demo's default settings."""
    summaries = load_summaries(SWEEPS)
    sweeps = {(summary["threads"], tuple(summary["seeds"])) for summary in summaries}
    assert {(1, tuple(range(10))), (2, tuple(range(10)))} <= sweeps
    defaults = {k: v for k, v in asdict(DemoSettings()).items() if k != "seed"}
    for summary in summaries:
        assert {k: v for k, v in summary["settings"].items() if k != "seed"} == defaults
        assert len(summary["seeds"]) == 10
        assert {"base", "grm", "ssc"} <= set(summary["models"])


def test_each_summary_is_its_committed_per_seed_results():
    """A summary cannot be edited by hand: its accuracies are those of the per-seed results.json files."""
    for path in sorted(SWEEPS.rglob("summary.json")):
        summary = json.loads(path.read_text(encoding="utf-8"))
        records = {}
        for seed in summary["seeds"]:
            record = json.loads((path.parent / f"seed{seed}" / "results.json").read_text(encoding="utf-8"))
            assert record["settings"]["seed"] == seed
            assert record["machine"]["torch_threads"] == summary["threads"]
            records[seed] = record
        recomputed = json.loads(json.dumps(summarize_seeds(records)))  # the JSON round trip of the keys
        assert recomputed == summary["models"], path


def test_summarize_seeds_counts_the_seeds_a_model_beats_its_base():
    def record(**accuracies):
        return {name: {"accuracy": acc, "train_seconds": 2.0} for name, acc in accuracies.items()}

    records = {0: record(base=0.2, grm=0.9, ssc=0.2), 1: record(base=0.3, grm=0.25, ssc=0.5)}
    summary = summarize_seeds(records)
    assert summary["grm"]["beats_base"] == 1 and summary["grm"]["min_lead_over_base"] == pytest.approx(-0.05)
    assert summary["ssc"]["beats_base"] == 1 and summary["ssc"]["min_lead_over_base"] == 0.0  # a tie loses
    assert "beats_base" not in summary["base"] and summary["base"]["train_seconds"] == 2.0
    assert "beats_base" not in summarize_seeds({0: record(grm=0.5)})["grm"]


def _sweep(folder: Path, threads: int, accuracies: dict[str, list[float]]) -> None:
    records = {
        seed: {name: {"accuracy": a[seed], "train_seconds": 10.0 + seed} for name, a in accuracies.items()}
        for seed in range(len(next(iter(accuracies.values()))))
    }
    summary = {"seeds": list(records), "threads": threads, "models": summarize_seeds(records)}
    (folder / f"threads{threads}").mkdir(parents=True)
    (folder / f"threads{threads}" / "summary.json").write_text(json.dumps(summary), encoding="utf-8")


def test_table_rows_per_thread_count_and_write_docs_replaces_only_the_block(tmp_path, capsys):
    _sweep(tmp_path / "sweeps", 2, {"base": [0.2, 0.3], "grm": [0.9, 0.25]})
    _sweep(tmp_path / "sweeps", 1, {"base": [0.2, 0.4], "grm": [0.9, 0.8]})
    table = render_table(tmp_path / "sweeps")
    base = "| base (gated linear attention) | 1 | 0, 1 | **0.300 ± 0.141** | 0.200-0.400 | - | - |"
    assert table[2] == base
    assert table[3] == "| + MC `grm` | 1 | 0, 1 | **0.850 ± 0.071** | 0.800-0.900 | 2/2 | +0.400 |"
    assert table[5] == "| + MC `grm` | 2 | 0, 1 | **0.575 ± 0.460** | 0.250-0.900 | 1/2 | -0.050 |"
    doc = tmp_path / "README.md"
    doc.write_text(f"# t\n{BEGIN}\n| old |\n{END}\nafter\n", encoding="utf-8")
    assert main(["demo", "--table", str(tmp_path / "sweeps"), "--write-docs", str(doc)]) == 0
    assert doc.read_text(encoding="utf-8") == "\n".join(["# t", BEGIN, *table, END, "after"]) + "\n"
    assert "wrote the table (4 rows)" in capsys.readouterr().out
    assert main(["demo", "--table", str(tmp_path / "sweeps")]) == 0
    assert capsys.readouterr().out.splitlines() == table


def test_seed_ranges():
    from mcrnn.eval.demo_table import seed_range

    assert seed_range([2, 0, 1, 3]) == "0-3"
    assert (seed_range([10, 12]), seed_range([1, 5, 6])) == ("10, 12", "1, 5, 6")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--write-docs", "{doc}"], "--write-docs needs --table"),
        (["--table", "{tmp}"], "--table: no summary.json under"),
        (["--table", "{sweeps}", "--write-docs", "{doc}"], "has no line"),
    ],
)
def test_table_errors_are_one_line_and_leave_the_file(tmp_path, capsys, argv, message):
    _sweep(tmp_path / "sweeps", 1, {"base": [0.2]})
    doc = tmp_path / "no_markers.md"
    doc.write_text("no markers\n", encoding="utf-8")
    empty = tmp_path / "sweeps" / "threads1" / "empty"
    empty.mkdir()
    argv = [a.format(doc=doc, tmp=empty, sweeps=tmp_path / "sweeps") for a in argv]
    assert main(["demo", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mcrnn demo: error: ") and message in err and err.count("\n") == 1
    assert doc.read_text(encoding="utf-8") == "no markers\n"


def test_demo_models_have_labels():
    from mcrnn.eval.demo_table import LABELS

    assert set(LABELS) == set(DEMO_MODELS)
