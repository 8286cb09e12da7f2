"""Test-session setup shared by every test module."""

import os

import torch

# Triton's interpreter must be chosen before triton is first imported (``import mcrnn`` may import it
# through transformers): without a GPU, the Triton kernel tests run interpreted on the CPU.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
