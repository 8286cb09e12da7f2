"""Gate for the Triton kernel test modules: the kernels run, or the module is skipped naming why.

Without CUDA the kernels run in Triton's interpreter, which must be chosen (``TRITON_INTERPRET=1``)
before ``triton`` is first imported: ``tests/conftest.py`` sets it at session start unless the
environment already has a value. Imported by test modules (``tests/`` is on ``sys.path`` under
pytest's default import mode, as the directory of the root ``conftest.py``).
"""

from __future__ import annotations

import os
from types import ModuleType

import pytest
import torch


def require_triton_kernels() -> ModuleType:
    """``triton``, on a GPU or interpreted; skips the calling module with the reason otherwise."""
    if torch.cuda.is_available():
        return pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[triton]')")
    before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    triton = pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[triton]')")
    if isinstance(triton.language.zeros, triton.runtime.JITFunction):
        pytest.skip(
            "no CUDA and Triton's interpreter is off: triton was imported before TRITON_INTERPRET=1 was "
            f"set (TRITON_INTERPRET={before!r} in the environment); start pytest with TRITON_INTERPRET "
            "unset or =1",
            allow_module_level=True,
        )
    return triton
