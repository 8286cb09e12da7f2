"""docs/results.md is what ``mcrnn experiment report`` makes of the committed per-run results alone."""

from pathlib import Path

from mcrnn.eval.experiments.page import write_page
from mcrnn.eval.experiments.runner import CHECKOUT_RUNS

ROOT = Path(__file__).parents[2]
RUNS = ROOT / CHECKOUT_RUNS


def test_docs_results_page_is_what_the_report_writes(tmp_path):
    runs = sorted(RUNS.glob("*/*.json"))
    assert runs, f"no per-run results are committed in {RUNS}"
    page = tmp_path / "results.md"  # the plots' links are relative to the page: results/<plot>.png
    write_page(RUNS, page)
    assert page.read_text(encoding="utf-8") == (ROOT / "docs" / "results.md").read_text(encoding="utf-8"), (
        "docs/results.md is stale: run `mcrnn experiment report` from the checkout"
    )
