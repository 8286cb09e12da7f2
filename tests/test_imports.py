"""``import mcrnn.ops`` stays light; ``import mcrnn`` still registers the Auto classes."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import mcrnn


def _run(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return result.stdout.strip()


def test_ops_do_not_import_transformers() -> None:
    code = "import sys, mcrnn.ops, mcrnn.layers; print('transformers' in sys.modules)"
    assert _run(code) == "False"


def test_import_mcrnn_registers_when_transformers_comes_later() -> None:
    code = (
        "import sys, mcrnn; assert 'transformers' not in sys.modules\n"
        "from transformers import AutoConfig, AutoModelForCausalLM\n"
        "sizes = dict(vocab_size=11, hidden_size=8, num_hidden_layers=1, num_heads=2)\n"
        "config = AutoConfig.for_model('mcrnn', **sizes)\n"
        "print(type(config).__name__, type(AutoModelForCausalLM.from_config(config)).__name__)"
    )
    assert _run(code) == "MCConfig MCForCausalLM"


def test_import_mcrnn_registers_when_transformers_came_first() -> None:
    code = (
        "import transformers, mcrnn\n"
        "from transformers import AutoConfig\n"
        "print(type(AutoConfig.for_model('mcrnn')).__name__, mcrnn.MCConfig.__name__)"
    )
    assert _run(code) == "MCConfig MCConfig"


def test_ops_modules_are_not_shadowed() -> None:
    code = (
        "import importlib, mcrnn.ops as ops\n"
        "print(callable(ops.memory_caching), importlib.import_module('mcrnn.ops.api').__name__,\n"
        "      sorted(importlib.import_module('mcrnn.ops.linear').__all__))"
    )
    exported = "['MatrixMemoryCache', 'chunk_linear_mc', 'naive_linear_mc', 'recurrent_linear_mc']"
    assert _run(code) == f"True mcrnn.ops.api {exported}"


#: the package's layers, lowest first (docs/DESIGN.md §9): a module imports only from its own level or below
LEVELS = {
    "utils": 0,
    "ops": 1,
    "layers": 2,
    "models": 3,
    "_registration": 3,
    "__init__": 3,
    "data": 4,
    "train": 5,
    "eval": 6,
    "bench": 6,
    "cli": 7,
    "__main__": 7,
}


def _mcrnn_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, first part below ``mcrnn``) of every import of mcrnn in ``tree``, lazy ones included;
    ``import mcrnn`` / ``from mcrnn import x`` give ``__init__`` (or ``x``)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module == "mcrnn":
                names = [f"mcrnn.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "mcrnn":
                found.append((node.lineno, parts[1] if len(parts) > 1 else "__init__"))
    return found


def test_no_module_imports_a_higher_layer() -> None:
    root = Path(mcrnn.__file__).parent
    upward = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        own = relative.parts[0].removesuffix(".py")
        assert own in LEVELS, f"{relative}: {own!r} has no level in LEVELS; place it in the layering"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        relative_imports = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level]
        assert not relative_imports, f"{relative}:{relative_imports}: relative imports (not checked here)"
        for line, target in _mcrnn_imports(tree):
            assert target in LEVELS, f"{relative}:{line} imports mcrnn.{target}, which has no level"
            if LEVELS[target] > LEVELS[own]:
                upward.append(f"{relative}:{line} ({own}) imports mcrnn.{target}")
    assert not upward, "imports running up the layers:\n" + "\n".join(upward)
