"""The learned router of a retrofit, exact at initialisation.

Per layer, router queries ``u_t = x_t W_u`` (``x`` the layer's input, ``W_u`` [hidden -> H*Dk], zero at
init) and a per-head gate ``gamma`` (zero at init) that mixes the MC read into the host's own read::

    y_t = y_host_t + gamma_h (y_mc_t - y_host_t)

``y_host`` is the host's unchanged recurrence, ``y_mc`` mcrnn's MC read with router ``u``. At init
``gamma = 0``, so ``y = y_host`` exactly (bit for bit, for any segment size, aggregation and init):
the wrapped model's logits are the original's. An "online bias" added to the online memory's router
logit is not exact (the cached memories keep weight ``e^{s_i} / (e^{s_i} + e^{s_online + b})`` > 0 for
any finite b), hence the gate. Gradients: ``dy/dgamma = y_mc - y_host`` is nonzero from the first
step; ``W_u`` receives gradient once ``gamma != 0`` (as a LoRA pair whose one factor starts at zero).
With ``u = 0`` the ``grm`` weights are uniform, i.e. the router starts as ``average``.
"""

from __future__ import annotations

import torch
from torch import nn


class LearnedRouter(nn.Module):
    """Router weights ``W_u`` [hidden -> heads*key_dim] and the per-head gate ``gamma`` [heads]."""

    def __init__(self, hidden_size: int, heads: int, key_dim: int) -> None:
        super().__init__()
        self.heads, self.key_dim = heads, key_dim
        self.proj = nn.Linear(hidden_size, heads * key_dim, bias=False)
        self.gate = nn.Parameter(torch.zeros(heads))
        nn.init.zeros_(self.proj.weight)

    def queries(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``u = x W_u``: [B, T, hidden] -> [B, T, heads, key_dim] in ``dtype``."""
        return self.proj(x).view(*x.shape[:2], self.heads, self.key_dim).to(dtype)

    def blend(self, host: torch.Tensor, cached: torch.Tensor) -> torch.Tensor:
        """``host + gamma (cached - host)`` over [B, T, heads, D] (in ``host``'s dtype)."""
        gate = self.gate.to(cached.dtype)[:, None]
        return (host.to(cached.dtype) + gate * (cached - host.to(cached.dtype))).to(host.dtype)
