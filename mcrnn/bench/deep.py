"""Deep-memory benchmark: ``MemoryCachingAttention`` with ``dla``/``titans`` (base, grm, soup, ssc k=2)
next to ``titans-pytorch``'s ``NeuralMemory`` (the optional ``bench`` extra) at the same width, heads
and inner chunk, forward+backward on CPU float32 by default.

:func:`deep_suite` gives ``(name, case)`` pairs for the suite runner (cases of kind ``layer`` and
``titans_pytorch``, the latter built by :func:`build_titans_pytorch`); :func:`deep_rows` measures
them in this process and returns one row per case (a quick table for the docs).
"""

from __future__ import annotations

import importlib.util
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

DEEP_SEQ_LENS = (512, 1024, 2048)
VARIANTS = {
    "base": {"segment_size": None},
    "grm": {"aggregation": "grm"},
    "soup": {"aggregation": "soup"},
    "ssc_k2": {"aggregation": "ssc", "top_k": 2},
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
    """``(name, case)`` pairs: ``{dla,titans}_{base,grm,soup,ssc_k2}`` per T, and ``titans_pytorch``."""
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


def build_layer(case: dict[str, Any]) -> tuple[Callable[[], None], int]:
    """``(step, tokens)`` for ``MemoryCachingAttention(hidden, heads, **options)``, forward + backward."""
    from mcrnn.layers import MemoryCachingAttention

    torch.manual_seed(0)
    dtype = getattr(torch, case.get("dtype", "float32"))
    layer = MemoryCachingAttention(case["hidden_size"], case["heads"], **case["options"]).to(dtype)
    x = torch.randn(case["batch"], case["seq_len"], case["hidden_size"], dtype=dtype, requires_grad=True)

    def step() -> None:
        layer(x)[0].sum().backward()

    return step, case["batch"] * case["seq_len"]


def deep_rows(
    seq_lens: tuple[int, ...] = DEEP_SEQ_LENS, repeats: int = 5, **suite_options: Any
) -> list[dict[str, Any]]:
    """Median forward+backward wall and CPU time (ms) of every case of :func:`deep_suite`, in-process.

    For each T the cases are built and warmed up once, then timed round-robin (one run of each case
    per round), so a shared machine's load drifts over all of them alike; the process CPU time is
    reported next to the wall time because it is less sensitive to other jobs on the machine.
    """
    rows = []
    for seq_len in seq_lens:
        cases = deep_suite((seq_len,), **suite_options)
        steps = []
        for name, case in cases:
            builder = build_titans_pytorch if case["kind"] == "titans_pytorch" else build_layer
            step, tokens = builder(case)
            step()
            steps.append((name, step, tokens))
        wall: dict[str, list[float]] = {name: [] for name, _, _ in steps}
        cpu: dict[str, list[float]] = {name: [] for name, _, _ in steps}
        for _ in range(repeats):
            for name, step, _ in steps:
                start_wall, start_cpu = time.perf_counter(), time.process_time()
                step()
                wall[name].append(time.perf_counter() - start_wall)
                cpu[name].append(time.process_time() - start_cpu)
        for name, _, tokens in steps:
            median = statistics.median(wall[name])
            rows.append(
                {
                    "name": name,
                    "seq_len": seq_len,
                    "ms": 1e3 * median,
                    "cpu_ms": 1e3 * statistics.median(cpu[name]),
                    "ktok_per_s": tokens / median / 1e3,
                }
            )
    return rows
