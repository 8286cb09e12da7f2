"""Parameters of a deep memory (``dla``/``titans``) inside :class:`MemoryCachingAttention`.

Per head the memory network is ``f(x) = x + W_L gelu(... gelu(W_1 x))`` (depth ``L``, hidden width
``E * head_dim``; depth 1 is a matrix memory ``f(x) = W x``; see :mod:`mcrnn.ops.deep.network`). This
module owns its learned initial weights and the per-token, per-head inner-loop rates, all from ``x``::

    eta_t   = lr_max * sigmoid(x_t W_eta + b_eta)         step size in (0, lr_max), lr_max = 0.01
    alpha_t = sigmoid(x_t W_alpha + b_alpha) ** (1/16)    retention in (0, 1), near 1 (as GLA's gate)
    beta_t  = sigmoid(x_t W_beta + b_beta)                momentum (titans) in (0, 1)

Values are L2-normalised per head (keys and queries already are in the layer), so the inner
gradients stay bounded whatever the scale of ``x`` (the output's scale is set by the layer's gated
RMSNorm); with ``lr_max = 0.01`` the updates stay finite for inputs of norm 1e3. Padded tokens go
to the op as ``mask`` (identity steps: no write, no retention, no momentum change). The initial
weights use a Xavier-uniform init per head: small, but non-zero so that gradients pass through the
hidden layer (an all-zero MLP memory would never depend on the query).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mcrnn.ops.deep import layer_shapes
from mcrnn.ops.spec import DEEP_MEMORIES, check_choice

#: gates sigmoid(.)^(1/16) stay close to 1 (GLA's gate normaliser): the deep memories' retention
#: alpha and the matrix memories' decay in the layer
GATE_NORMALIZER = 16.0


class DeepMemory(nn.Module):
    """Learned initial weights ``[H, d_out, d_in]`` per layer and the ``eta/alpha/beta`` projection.

    Args:
        hidden_size: width of ``x``; num_heads, head_dim: ``H`` and ``D`` (``Dk = Dv = D``).
        memory: ``dla`` or ``titans`` (``titans`` also projects the momentum ``beta``).
        expansion: hidden width ``E * D`` (>= 1); depth: number of weight matrices (>= 1).
        lr_max: upper bound of the inner step size ``eta``.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        head_dim: int,
        *,
        memory: str,
        expansion: int = 4,
        depth: int = 2,
        lr_max: float = 0.01,
    ) -> None:
        super().__init__()
        check_choice("memory", memory, DEEP_MEMORIES)
        if not lr_max > 0:
            raise ValueError(f"lr_max must be > 0, got {lr_max!r}")
        shapes = layer_shapes(head_dim, head_dim, depth, expansion)
        self.memory, self.num_heads, self.lr_max = memory, num_heads, float(lr_max)
        self.weights = nn.ParameterList([nn.Parameter(torch.empty(num_heads, o, i)) for o, i in shapes])
        self.rate_proj = nn.Linear(hidden_size, (3 if memory == "titans" else 2) * num_heads)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform initial weights; rates start at eta = lr_max/2, alpha ~ 0.99, beta ~ 0.5."""
        for w in self.weights:
            bound = math.sqrt(6.0 / (w.shape[1] + w.shape[2]))
            nn.init.uniform_(w, -bound, bound)
        nn.init.normal_(self.rate_proj.weight, std=0.02)
        nn.init.zeros_(self.rate_proj.bias)
        with torch.no_grad():
            self.rate_proj.bias[self.num_heads : 2 * self.num_heads] = 2.0  # alpha = sigmoid(2)^(1/16)

    def forward(
        self, x: torch.Tensor, v: torch.Tensor, keep: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor | list[torch.Tensor] | None]]:
        """Normalised values and the memory's inputs ``params, eta, alpha, momentum, mask``
        (:class:`mcrnn.ops.memories.DLA` / :class:`~mcrnn.ops.memories.Titans` fields).

        Args:
            x: [B, T, hidden]; v: [B, T, H, D] values; keep: [B, T] 1 for tokens, 0 for padding.
        """
        logits = self.rate_proj(x)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        rates = logits.unflatten(-1, (-1, self.num_heads)).unbind(-2)
        eta = self.lr_max * torch.sigmoid(rates[0])
        alpha = torch.exp(nn.functional.logsigmoid(rates[1]) / GATE_NORMALIZER)
        momentum = torch.sigmoid(rates[2]) if self.memory == "titans" else None
        mask = None if keep is None else keep != 0
        options = {"params": list(self.weights), "eta": eta, "alpha": alpha, "momentum": momentum}
        options["mask"] = mask
        return nn.functional.normalize(v, dim=-1), options
