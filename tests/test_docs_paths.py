"""Every ``mcrnn/...py`` path and every dotted ``mcrnn.x.y`` name in the README and docs/*.md exists, so the
docs cannot drift from the package layout (a dotted name is a module, or a module then its attributes)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PATH = re.compile(r"\bmcrnn/[\w/]+\.py\b")
DOTTED = re.compile(r"\bmcrnn(?:\.\w+)+")


def _resolves(dotted: str) -> bool:
    """``dotted`` is a module, or its longest importable prefix is a module with the rest as attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(target, name):
                return False
            target = getattr(target, name)
        return True
    return False


def _names(pattern: re.Pattern[str]) -> list[tuple[str, str]]:
    found = {(doc.relative_to(ROOT).as_posix(), m) for doc in DOCS for m in pattern.findall(doc.read_text())}
    return sorted(found)


@pytest.mark.parametrize(("doc", "path"), _names(PATH))
def test_doc_file_paths_exist(doc, path):
    assert (ROOT / path).is_file(), f"{doc} names {path}, which does not exist"


@pytest.mark.parametrize(("doc", "dotted"), [n for n in _names(DOTTED) if not n[1].endswith(".py")])
def test_doc_dotted_names_resolve(doc, dotted):
    assert _resolves(dotted), f"{doc} names {dotted}, which does not resolve"
