"""Deep-memory benchmark: ``MemoryCachingAttention`` with ``dla``/``titans`` (base, grm, soup, ssc k=2,
and grm over the log segmentation, i.e. Log-Linear++) next to ``titans-pytorch``'s ``NeuralMemory`` (the
optional ``bench`` extra) at the same width, heads and inner chunk, forward+backward on CPU float32 by
default.

:func:`deep_suite` gives ``(name, case)`` pairs for the suite runner (cases of kind ``layer`` and
``titans_pytorch``, the latter built by :func:`build_titans_pytorch`), measured by ``mcrnn bench
--suite deep`` like every other suite.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import torch

DEEP_SEQ_LENS = (512, 1024, 2048)
VARIANTS = {
    "base": {"segment_size": None},
    "grm": {"aggregation": "grm"},
    "soup": {"aggregation": "soup"},
    "ssc_k2": {"aggregation": "ssc", "top_k": 2},
    "log_grm": {"segment_size": None, "segmentation": "log", "aggregation": "grm"},
}


def titans_pytorch_available() -> bool:
    """Whether ``titans_pytorch`` is importable."""
    return importlib.util.find_spec("titans_pytorch") is not None


def deep_suite(
    seq_lens: tuple[int, ...] = DEEP_SEQ_LENS,
    hidden_size: int = 256,
    heads: int = 4,
    chunk_size: int = 64,
    segment_size: int = 256,
    batch: int = 1,
    dtype: str = "float32",
) -> list[tuple[str, dict[str, Any]]]:
    """``(name, case)`` pairs: ``{dla,titans}_{base,grm,soup,ssc_k2,log_grm}`` per T, and
    ``titans_pytorch``."""
    shape = {"batch": batch, "hidden_size": hidden_size, "heads": heads, "dtype": dtype}
    cases = []
    for seq_len in seq_lens:
        for memory in ("dla", "titans"):
            for name, variant in VARIANTS.items():
                options = {
                    "memory": memory,
                    "chunk_size": chunk_size,
                    "segment_size": segment_size,
                    **variant,
                }
                cases.append(
                    (f"{memory}_{name}", {"kind": "layer", "seq_len": seq_len, "options": options, **shape})
                )
        if titans_pytorch_available():
            case = {"kind": "titans_pytorch", "seq_len": seq_len, "chunk_size": chunk_size, **shape}
            cases.append(("titans_pytorch", case))
    return cases


def build_titans_pytorch(case: dict[str, Any]) -> tuple[Callable[[], None], int]:
    """``(step, tokens)`` for ``titans_pytorch.NeuralMemory(dim, chunk_size, heads)`` (its defaults:
    a depth-2 MLP memory of expansion 4 per head, momentum, decay), forward + backward."""
    from titans_pytorch import NeuralMemory

    torch.manual_seed(0)
    dtype = getattr(torch, case.get("dtype", "float32"))
    heads = case["heads"]
    memory = NeuralMemory(
        dim=case["hidden_size"],
        chunk_size=case["chunk_size"],
        heads=heads,
        dim_head=case["hidden_size"] // heads,
    ).to(dtype)
    x = torch.randn(case["batch"], case["seq_len"], case["hidden_size"], dtype=dtype, requires_grad=True)

    def step() -> None:
        memory(x)[0].sum().backward()

    return step, case["batch"] * case["seq_len"]
