"""The per-key-channel decay of the ``gla`` and ``kda`` memories, fla's parametrisations:
[B, T, hidden] -> ``log_decay`` [B, T, H, Dk] (finite, <= 0), computed in at least float32.

- ``gla``: ``g = logsigmoid(x W_g + b_g) / 16`` (fla's GLA ``gk`` with ``gate_logit_normalizer=16``; full
  rank here, fla's is a rank-16 product);
- ``kda``: ``g = -exp(A_log) * softplus(x W_f + dt_bias)`` (fla's KDA gate). fla starts ``A_log`` [H] at
  ``log U(1, 16)`` and ``dt_bias`` [H * Dk] at the inverse softplus of ``dt``, log-uniform in [1e-3, 1e-1];
  here both are uniform draws over the same ranges, ``A_log ~ U(0, log 16)`` and ``dt_bias ~
  U(softplus^-1(1e-3), softplus^-1(1e-1))`` (about log-uniform ``dt``), so that they are ``torch.nn.init``
  calls, which ``from_pretrained`` skips for loaded weights.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mcrnn.layers.deep_memory import GATE_NORMALIZER


class ChannelDecay(nn.Module):
    """``log_decay = f(x)`` [B, T, H, Dk] for ``memory`` ``gla`` or ``kda`` (module docstring)."""

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int, memory: str) -> None:
        super().__init__()
        self.memory, self.num_heads, self.head_dim = memory, num_heads, head_dim
        inner = num_heads * head_dim
        self.proj = nn.Linear(hidden_size, inner, bias=memory == "gla")
        if memory == "kda":
            self.A_log = nn.Parameter(torch.empty(num_heads))
            self.dt_bias = nn.Parameter(torch.empty(inner))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's default for the projection; ``A_log`` and ``dt_bias`` over fla's ranges (``kda``)."""
        self.proj.reset_parameters()
        if self.memory == "kda":
            nn.init.uniform_(self.A_log, 0.0, math.log(16.0))
            nn.init.uniform_(self.dt_bias, _inverse_softplus(1e-3), _inverse_softplus(1e-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.proj(x)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        logits = logits.unflatten(-1, (self.num_heads, self.head_dim))
        if self.memory == "gla":
            return nn.functional.logsigmoid(logits) / GATE_NORMALIZER
        rate = nn.functional.softplus(logits + self.dt_bias.view(self.num_heads, self.head_dim))
        return -self.A_log.exp().unsqueeze(-1) * rate


def _inverse_softplus(value: float) -> float:
    """``x`` with ``softplus(x) = value`` (> 0)."""
    return math.log(math.expm1(value))
