"""Short causal depthwise convolution with a decoding buffer."""

from __future__ import annotations

import torch
from torch import nn


class ShortConvolution(nn.Module):
    """``y_t = silu(sum_{j<K} w_j * x_{t-j} + bias)`` per channel (causal, depthwise, kernel K).

    ``forward(x [B, T, C], state [B, K-1, C] | None) -> (y [B, T, C], new_state [B, K-1, C])``: the
    state holds the last ``K-1`` inputs, so calling it token by token equals one call on the whole
    sequence (zeros stand before the first token).
    """

    def __init__(self, channels: int, kernel_size: int = 4) -> None:
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(channels, channels, kernel_size, groups=channels, bias=True)

    def forward(
        self, x: torch.Tensor, state: torch.Tensor | None = None, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``lengths`` [B]: real tokens per row of a right-padded ``x``; the new state then holds each
        row's last ``K-1`` real inputs, not the pads'."""
        history = self.kernel_size - 1
        if state is None:
            state = x.new_zeros(x.shape[0], history, x.shape[2])
        padded = torch.cat([state.to(x.dtype), x], dim=1)
        # the depthwise conv as K shifted multiply-adds: same result as self.conv, but its backward is
        # a few elementwise ops instead of the CPU's slow depthwise convolution_backward
        seq_len, weight = x.shape[1], self.conv.weight[:, 0]  # [C, K]
        y = self.conv.bias + sum(weight[:, m] * padded[:, m : m + seq_len] for m in range(self.kernel_size))
        if lengths is None:
            return nn.functional.silu(y), padded[:, padded.shape[1] - history :]
        index = (lengths.view(-1, 1) + torch.arange(history, device=x.device)).unsqueeze(-1)
        return nn.functional.silu(y), padded.gather(1, index.expand(-1, -1, padded.shape[2]))
