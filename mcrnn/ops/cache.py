"""The decoding-cache protocol every memory family follows.

A cache is a dataclass holding:

- ``spec``: the :class:`~mcrnn.ops.spec.MCSpec` it was built with, so decoding never needs the
  segmentation passed again (a conflicting one is an error);
- ``position``: the tokens of the stream seen so far;
- tensors whose first dimension is the batch ``B``; cached states are stacked ``[B, N, H, ...]``
  (``N`` cached segments or buckets), per-token state is ``[B, H, ...]``.

Mutation rule: ops never modify a cache passed to them; every call returns a new cache object (which
may share unchanged tensors with the old one). :meth:`MemoryCache.reorder` selects batch rows (beam
search, batched generation dropping finished rows).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

import torch

from mcrnn.ops.spec import MCSpec

CacheT = TypeVar("CacheT", bound="MemoryCache")


@dataclass
class MemoryCache:
    """Fields every cache has: the spec it follows and the stream position."""

    spec: MCSpec
    position: int

    @property
    def batch_size(self) -> int:
        """``B``, read off the first batch-major tensor."""
        for f in fields(self):
            tensor = _first_tensor(getattr(self, f.name))
            if tensor is not None:
                return tensor.shape[0]
        raise ValueError(f"{type(self).__name__} holds no tensor")

    def reorder(self: CacheT, indices: torch.Tensor) -> CacheT:
        """A cache whose row ``b`` is row ``indices[b]`` of this one (``indices``: LongTensor [B'])."""
        indices = batch_indices(indices)
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.batch_size):
            raise ValueError(f"indices must lie in [0, {self.batch_size}), got {indices.tolist()}")
        changes = {
            f.name: _take(getattr(self, f.name), indices)
            for f in fields(self)
            if f.name not in ("spec", "position")
        }
        return replace(self, **changes)

    def to_dtype(self: CacheT, dtype: torch.dtype) -> CacheT:
        """This cache with its floating tensors in ``dtype`` (the decode steps accumulate in float32 or
        float64 whatever the inputs' dtype); itself when nothing changes."""
        names = [f.name for f in fields(self) if f.name not in ("spec", "position")]
        changes = {name: _cast(getattr(self, name), dtype) for name in names}
        if all(changes[name] is getattr(self, name) for name in changes):
            return self
        return replace(self, **changes)

    def check_compatible(self, batch: int, heads: int, key_dim: int, value_dim: int) -> None:
        """Raise ``ValueError`` when the cache was built for other B, H, Dk or Dv than the inputs."""
        expected = self.shape_signature()
        got = (batch, heads, key_dim, value_dim)
        if expected != got:
            raise ValueError(
                f"cache was built for (B, H, Dk, Dv)={expected}, the inputs are {got}: pass the cache of "
                "this layer and batch"
            )

    def shape_signature(self) -> tuple[int, int, int, int]:
        """``(B, H, Dk, Dv)`` the cache was built for."""
        raise NotImplementedError


def batch_indices(indices: object) -> torch.Tensor:
    """``indices`` (a tensor or sequence of ints) as a 1-D LongTensor [B'] of batch rows; ``TypeError`` for
    anything not integer (floats would be truncated silently), ``ValueError`` when not 1-D."""
    tensor = torch.as_tensor(indices)
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise TypeError(f"indices must be integers (batch rows), got dtype {tensor.dtype}")
    if tensor.dim() != 1:
        raise ValueError(f"indices must be 1-D [B'], got shape {tuple(tensor.shape)}")
    return tensor.long()


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (list, tuple)):
        for item in value:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _take(value: Any, indices: torch.Tensor) -> Any:
    """Rows ``indices`` of every batch-major tensor in ``value`` (lists recursed, other values kept)."""
    if isinstance(value, torch.Tensor):
        return value.index_select(0, indices.to(value.device))
    if isinstance(value, list):
        return [_take(item, indices) for item in value]
    return value


def _cast(value: Any, dtype: torch.dtype) -> Any:
    """``value`` with every floating tensor in ``dtype`` (lists recursed; unchanged ones kept)."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, list):
        cast = [_cast(item, dtype) for item in value]
        return value if all(a is b for a, b in zip(cast, value, strict=True)) else cast
    return value
