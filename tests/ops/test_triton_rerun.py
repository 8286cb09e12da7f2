"""Runs the interpreter tests of the Triton kernels in a fresh process when this one cannot.

Triton's interpreter must be selected (``TRITON_INTERPRET=1``) before triton is first imported. In a
full test session something else may import it first (``import mcrnn`` pulls in transformers and
``torch._dynamo``, which import triton); the Triton test modules then skip themselves, and this
test runs them in a new process with the variable set from the start.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

INTERPRETED = ("test_triton_chunk.py", "test_triton_cached.py", "test_triton_grm.py", "test_triton_bench.py")


def test_interpreter_modules_in_fresh_process():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the Triton tests compile and ran in this process")
    triton = pytest.importorskip("triton")
    if not isinstance(triton.language.zeros, triton.runtime.JITFunction):
        pytest.skip("triton runs interpreted in this process: the Triton tests ran here")
    here = Path(__file__).resolve().parent
    env = dict(os.environ, TRITON_INTERPRET="1")
    paths = [str(here / name) for name in INTERPRETED]
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *paths]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=here.parents[1], timeout=900)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0 and " passed" in summary, done.stdout[-4000:] + done.stderr[-2000:]
