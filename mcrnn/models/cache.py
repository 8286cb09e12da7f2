"""``MCCache``: the recurrent generation cache of an MC model, one opaque entry per layer.

An MC layer's entry holds its online memory state, the cached segment states with their router
contexts and the short-convolution buffer; an attention layer's entry holds its keys and values.
The model only stores and passes them back: ``layers[l]`` is whatever layer ``l`` returned with
``use_cache=True``; every entry has ``reorder(indices)``, so :meth:`MCCache.reorder_cache` serves beam
search. The object is not a ``transformers.Cache``: generation asks the model for it
(``_supports_default_dynamic_cache() is False``), as for Mamba-style models.
"""

from __future__ import annotations

from typing import Any

import torch


class MCCache:
    """Per-layer caches and the number of tokens they have seen."""

    def __init__(self, num_layers: int) -> None:
        self.layers: list[Any] = [None] * num_layers
        self.seen_tokens = 0

    def __len__(self) -> int:
        return len(self.layers)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens processed so far (the same for every layer)."""
        return self.seen_tokens

    @property
    def is_linear(self) -> list[bool]:
        """One flag per layer, as generation utilities expect; the cache never needs slicing of inputs."""
        return [True] * len(self.layers)

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        """Keep batch rows ``beam_idx`` of every layer, in place (what beam search calls each step)."""
        self.layers = [None if layer is None else layer.reorder(beam_idx) for layer in self.layers]
