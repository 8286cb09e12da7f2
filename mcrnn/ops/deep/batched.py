"""Small batched-matmul and accumulation helpers shared by the deep-memory chunk path.

Shapes are ``[..., m, n]`` batches; ``None`` stands for a zero that has not been materialised (the
hand-written backwards accumulate into lists whose entries start as ``None``).
"""

from __future__ import annotations

import torch


def add_matmul(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """``acc + alpha * a @ b`` over ``[..., m, n]`` batches (one ``baddbmm`` on flattened leading dims)."""
    flat = [x.reshape(-1, *x.shape[-2:]) for x in (acc, a, b)]
    return torch.baddbmm(*flat, alpha=alpha).view(acc.shape)


def accumulate_matmul(
    acc: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor, alpha: float = 1.0
) -> torch.Tensor:
    """``acc + alpha * a @ b`` for 3-D ``[BH, m, n]`` batches (``acc=None``: ``alpha * a @ b``)."""
    if acc is None:
        product = torch.bmm(a, b)
        return product.mul_(alpha) if alpha != 1.0 else product
    return torch.baddbmm(acc, a, b, alpha=alpha)


def accumulate(acc: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """``acc + x`` (``acc=None``: ``x``), out of place."""
    return x if acc is None else acc + x


def unbind_chunks(x: torch.Tensor | None, n_chunks: int) -> list[torch.Tensor | None]:
    """Per-chunk views of a chunk-major tensor (``None``: ``n_chunks`` Nones)."""
    return [None] * n_chunks if x is None else list(x.unbind(0))
