"""``import mcrnn.ops`` stays light; ``import mcrnn`` still registers the Auto classes."""

from __future__ import annotations

import subprocess
import sys


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
