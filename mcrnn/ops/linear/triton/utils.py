"""Host-side helpers shared by the Triton kernels: segment tables, launch configs, input checks.

The kernels see segments through small int32 tables built here once per call:

- the *chunk table* [NC, 4]: chunks never straddle a segment boundary. Segment ``i`` of length
  ``L_i`` is cut into ``ceil(L_i / BT)`` chunks; row ``c`` holds ``(start, length, segment,
  flags)`` with ``flags & 1`` = first chunk of its segment and ``flags & 2`` = last chunk;
- ``seg_ids`` [T]: ``s(t)``, the 0-based segment of every token;
- ``offsets`` [N + 1]: the first token of every segment, then ``T``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
import triton
import triton.language as tl

FIRST = 1
LAST = 2


def interpreting() -> bool:
    """True when ``TRITON_INTERPRET=1`` (kernels run on the CPU through Triton's interpreter)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def chunk_table(lengths: Sequence[int], block: int, device: torch.device) -> torch.Tensor:
    """The chunk table [NC, 4] (int32) of ``lengths`` cut into chunks of at most ``block`` tokens."""
    rows = []
    start = 0
    for seg, length in enumerate(lengths):
        for off in range(0, length, block):
            flags = (FIRST if off == 0 else 0) | (LAST if off + block >= length else 0)
            rows.append((start + off, min(block, length - off), seg, flags))
        start += length
    return torch.tensor(rows, dtype=torch.int32, device=device).view(-1, 4)


def segment_tables(lengths: Sequence[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``seg_ids`` [T] and ``offsets`` [N + 1] (int32) for segment ``lengths``."""
    counts = torch.tensor(list(lengths), dtype=torch.long, device=device)
    seg_ids = torch.repeat_interleave(torch.arange(len(lengths), device=device), counts)
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.long, device=device)
    offsets[1:] = counts.cumsum(0)
    return seg_ids.to(torch.int32), offsets.to(torch.int32)


def dot_dtype(dtype: torch.dtype) -> tl.dtype:
    """Operand dtype of ``tl.dot`` for inputs of ``dtype``.

    bf16/fp16 tensor cores on a GPU; float32 everywhere else. Triton's interpreter (3.9 at
    least) computes bf16 ``tl.dot`` wrongly, so bf16 operands are upcast there.
    """
    if dtype == torch.float16:
        return tl.float16
    if dtype == torch.bfloat16 and not interpreting():
        return tl.bfloat16
    return tl.float32


def dot_precision(dtype: torch.dtype) -> str:
    """``input_precision`` of ``tl.dot``: exact ``ieee`` for float32 I/O (no silent TF32)."""
    return "ieee" if dtype == torch.float32 else "tf32"


def time_block(head_dim: int) -> int:
    """Tokens per chunk / query block: 64, smaller for wide heads (registers), 16 when interpreting."""
    if interpreting():
        return 16
    return 64 if head_dim <= 64 else (32 if head_dim <= 128 else 16)


def autotuned(kernel: triton.JITFunction, key: list[str]) -> Callable:
    """A launcher: ``launch(grid, *args, **meta)`` that autotunes ``num_warps``/``num_stages`` on CUDA.

    Block sizes are chosen on the host (they shape the grid); only the warp count and the pipeline
    depth are tuned, and only where a GPU driver exists. Elsewhere (the interpreter) the kernel
    runs with a fixed configuration.
    """
    configs = [triton.Config({}, num_warps=w, num_stages=s) for w in (2, 4, 8) for s in (1, 2, 3)]
    tuned = triton.autotune(configs=configs, key=key)(kernel)

    def launch(grid: tuple[int, ...], *args, **meta) -> None:
        if interpreting():
            kernel[grid](*args, **meta)
        else:
            tuned[grid](*args, **meta)

    return launch


def contiguous(*tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    """Every tensor made contiguous (``None`` passes through)."""
    return [t if t is None else t.contiguous() for t in tensors]


def check_device(**tensors: torch.Tensor | None) -> torch.device:
    """The common device of ``tensors``; ``ValueError`` naming them when they are on several."""
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{name}: {dev}" for name, dev in devices.items())
        raise ValueError(f"Triton MC kernels need all inputs on one device, got {listed}")
    return next(iter(devices.values()))
