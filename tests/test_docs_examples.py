"""The code examples of the README and docs/ run as written, so the documented API cannot drift."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)
EXAMPLES = [
    pytest.param(code, id=f"{page.name}:{number}")
    for page in PAGES
    for number, code in enumerate(BLOCK.findall(page.read_text(encoding="utf-8")))
]


def test_the_docs_have_examples() -> None:
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("code", EXAMPLES)
def test_example_runs(code: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # examples that save write here
    with warnings.catch_warnings():  # the docs show the current API, not the deprecated keywords
        warnings.filterwarnings("error", "memory_caching's input keywords", DeprecationWarning)
        exec(compile(code, "<example>", "exec"), {"__name__": "__example__"})
