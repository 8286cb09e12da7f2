"""docs/results.md is what ``mcrnn experiment report`` makes of the committed per-run results."""

from pathlib import Path

import pytest

from mcrnn.eval.experiments.page import write_page

ROOT = Path(__file__).parents[2]
RESULTS = ROOT / "results" / "experiments"


def test_docs_results_page_is_what_the_report_writes(tmp_path):
    if not RESULTS.is_dir():
        pytest.skip(
            reason=f"the per-run results of docs/results.md are not committed yet (looked in {RESULTS})"
        )
    page = tmp_path / "results.md"  # the plots' links are relative to the page: results/<plot>.png
    write_page(RESULTS, page)
    assert page.read_text(encoding="utf-8") == (ROOT / "docs" / "results.md").read_text(encoding="utf-8"), (
        "docs/results.md is stale: mcrnn experiment report --out results/experiments --page docs/results.md"
    )
