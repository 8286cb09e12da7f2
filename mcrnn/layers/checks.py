"""Checks of a token mixer's inputs (shape, dtype, mask length; no host sync), shared by the MC layer,
attention and the model."""

from __future__ import annotations

import torch


def check_hidden_states(x: torch.Tensor, hidden_size: int, weight: torch.Tensor) -> None:
    """``ValueError`` unless ``x`` is [B, T, hidden_size] with B, T >= 1; ``TypeError`` when its dtype is
    not that of the layer's parameters (``weight``), except under ``torch.autocast``, which mixes them."""
    if x.dim() != 3 or x.shape[-1] != hidden_size or 0 in x.shape:
        raise ValueError(f"x must be [B, T, {hidden_size}] with B, T >= 1, got {tuple(x.shape)}")
    if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(
            f"x has dtype {x.dtype} but the layer's parameters are {weight.dtype}: cast one of them "
            f"(x.to({weight.dtype}) or layer.to({x.dtype}))"
        )


def check_attention_mask(mask: torch.Tensor, batch: int, seq_len: int, past: int) -> None:
    """``ValueError`` unless ``mask`` is [B, T] or [B, T_past + T] (``generate``'s convention: the whole
    stream so far), ``past`` the tokens already in the cache."""
    if mask.dim() != 2 or mask.shape[0] != batch or mask.shape[1] not in (seq_len, past + seq_len):
        raise ValueError(
            f"attention_mask must be [B, T]={batch, seq_len} or [B, T_past + T]={batch, past + seq_len} "
            f"(1 = token, 0 = padding), got {tuple(mask.shape)}"
        )
