"""The MC decoding state of a retrofitted model, kept beside the host's own generation cache.

The host cache (a transformers ``Cache``) holds each layer's conv and recurrent state; the MC state of
layer ``i`` (an mcrnn :class:`~mcrnn.ops.MemoryCache`, or :class:`RowMemory` for a left-padded
batch) lives in a dict on the same object, ``cache.__dict__[STORE]``. So that it follows the host
cache, the cache object's class is swapped (this one object only) for a subclass whose
``reorder_cache`` (beam search), ``batch_select_indices``, ``batch_repeat_interleave`` and ``reset``
also apply to the MC state; ``crop`` (assisted decoding) is refused, the MC state has no history.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from mcrnn.ops import MemoryCache

STORE = "_mcrnn_memory_caching"


@dataclass
class RowMemory:
    """MC state of a batch whose rows started at different positions (left padding): one cache per
    row, each continuing on its own so that its segments count from the row's first real token."""

    rows: list[MemoryCache]

    def reorder(self, indices: torch.Tensor) -> RowMemory:
        """The rows ``indices`` (beam search, batch selection)."""
        return RowMemory([self.rows[int(i)] for i in torch.as_tensor(indices).tolist()])


State = MemoryCache | RowMemory


def memory_store(cache: Any) -> dict[int, State]:
    """The MC state dict of the host ``cache`` (created, and the cache made to carry it, on first use)."""
    store = cache.__dict__.get(STORE)
    if store is None:
        store = cache.__dict__[STORE] = {}
        cache.__class__ = _following(type(cache))
    return store


def _apply(cache: Any, change: Callable[[State], State]) -> None:
    store = cache.__dict__.get(STORE, {})
    for layer, state in store.items():
        store[layer] = change(state)


_FOLLOWING: dict[type, type] = {}


def _following(cls: type) -> type:
    """``cls`` with the batch operations extended to the MC state (one subclass per host cache class)."""
    if cls in _FOLLOWING.values():
        return cls
    if cls not in _FOLLOWING:

        class Following(cls):  # type: ignore[misc, valid-type]
            def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
                super().reorder_cache(beam_idx)
                _apply(self, lambda state: state.reorder(beam_idx))

            def batch_select_indices(self, indices: torch.Tensor) -> None:
                super().batch_select_indices(indices)
                _apply(self, lambda state: state.reorder(indices))

            def batch_repeat_interleave(self, repeats: int) -> None:
                super().batch_repeat_interleave(repeats)

                def repeat(state: State) -> State:
                    rows = len(state.rows) if isinstance(state, RowMemory) else state.batch_size
                    return state.reorder(torch.arange(rows).repeat_interleave(repeats))

                _apply(self, repeat)

            def reset(self) -> None:
                super().reset()
                self.__dict__[STORE].clear()

            def crop(self, tokens_to_remove: int) -> None:
                raise NotImplementedError(
                    "crop (assisted or speculative decoding) is not supported with memory caching: the MC "
                    "state keeps no history to roll back"
                )

        Following.__name__ = Following.__qualname__ = f"{cls.__name__}WithMemoryCaching"
        _FOLLOWING[cls] = Following
    return _FOLLOWING[cls]
