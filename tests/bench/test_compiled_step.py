"""`python -m mcrnn.bench.compiled_step` runs (Dynamo only, one step) and prints the table of the docs."""

from __future__ import annotations

from pathlib import Path

from mcrnn.bench.compiled_step import HEADER, main

DOCS = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"


def test_runs_and_prints_the_documented_table() -> None:
    text = main(["--models", "base", "--backend", "eager", "--steps", "1", "--rounds", "1", "--warmup", "0"])
    lines = text.splitlines()
    assert HEADER in lines and any(line.startswith("| base | ") for line in lines)
    docs = DOCS.read_text()
    assert HEADER in docs and "python -m mcrnn.bench.compiled_step --models base grm ssc" in docs
