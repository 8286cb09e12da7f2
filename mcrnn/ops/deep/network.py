"""The per-head memory network of the deep memories and its inner losses (DESIGN.md §6).

A memory of depth ``L`` is a list of weights ``theta = [W_1, ..., W_L]``, layer ``l`` of shape
``[..., d_l, d_{l-1}]`` (input first). With ``a_0 = x``:

    z_l = W_l a_{l-1},   a_l = gelu(z_l) (l < L),   f(x) = x + z_L  (L >= 2),   f(x) = z_L  (L = 1)

Depth 2 is the paper's ``f(x) = x + W1 gelu(W2 x)`` (our ``W_1`` is its ``W2: D -> E*D``, our ``W_2``
its ``W1: E*D -> D``); deeper memories insert ``E*D -> E*D`` layers. Depth 1 is a plain matrix memory
``f(x) = W x`` without the residual, so a depth-1 ``dla`` is gated linear attention with write strength
``eta`` and a depth-1 memory's read is linear in its weights. GELU is the exact (erf) one.

Inner losses per token (``v`` the value):

- ``dla``: ``l(theta) = -<f(k), v>``, so ``dl/df = -v``;
- ``titans``: ``l(theta) = ||f(k) - v||^2``, so ``dl/df = 2 (f(k) - v)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

MEMORIES = ("dla", "titans")


def layer_shapes(key_dim: int, value_dim: int, depth: int, expansion: int) -> list[tuple[int, int]]:
    """``(d_out, d_in)`` of every layer: ``[(Dv, Dk)]`` at depth 1, else ``D -> E*D -> ... -> D``."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be an int >= 1, got {depth!r}")
    if isinstance(expansion, bool) or not isinstance(expansion, int) or expansion < 1:
        raise ValueError(f"expansion must be an int >= 1, got {expansion!r}")
    if depth == 1:
        return [(value_dim, key_dim)]
    if key_dim != value_dim:
        raise ValueError(f"a residual memory (depth >= 2) needs Dk == Dv, got Dk={key_dim}, Dv={value_dim}")
    hidden = expansion * key_dim
    return [(hidden, key_dim)] + [(hidden, hidden)] * (depth - 2) + [(key_dim, hidden)]


def check_params(params: Sequence[torch.Tensor], heads: int, key_dim: int, value_dim: int) -> None:
    """Check the initial weights ``params`` (one ``[H, d_out, d_in]`` tensor per layer) chain up."""
    if isinstance(params, torch.Tensor) or not isinstance(params, Sequence) or len(params) == 0:
        raise TypeError("params must be a non-empty list of [H, d_out, d_in] tensors (one per layer)")
    for i, w in enumerate(params):
        if not isinstance(w, torch.Tensor) or not w.is_floating_point() or w.dim() != 3:
            raise TypeError(f"params[{i}] must be a floating [H, d_out, d_in] tensor")
        if w.shape[0] != heads:
            raise ValueError(f"params[{i}] must have H={heads} heads, got shape {tuple(w.shape)}")
    dims = [params[0].shape[2]] + [w.shape[1] for w in params]
    if any(w.shape[2] != dims[i] for i, w in enumerate(params)):
        raise ValueError(f"params do not chain: shapes {[tuple(w.shape) for w in params]}")
    if dims[0] != key_dim or dims[-1] != value_dim:
        raise ValueError(f"params must map Dk={key_dim} to Dv={value_dim}, got {dims[0]} -> {dims[-1]}")
    if len(params) > 1 and key_dim != value_dim:
        raise ValueError(f"a residual memory (depth >= 2) needs Dk == Dv, got Dk={key_dim}, Dv={value_dim}")


def gelu(z: torch.Tensor) -> torch.Tensor:
    """Exact GELU ``z Phi(z)``."""
    return torch.nn.functional.gelu(z)


class _GeluAndGrad(torch.autograd.Function):
    """``(gelu(z), gelu'(z))`` in one node of fused kernels; backward: ``gelu''(z) = phi(z) (2 - z^2)``."""

    @staticmethod
    def forward(ctx, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
        slope = torch.ops.aten.gelu_backward(torch.ones_like(z), z)  # Phi(z) + z phi(z)
        ctx.save_for_backward(z, slope)
        return torch.nn.functional.gelu(z), slope

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h: torch.Tensor, grad_g: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        z, slope = ctx.saved_tensors
        square = z * z
        curvature = torch.exp(square * -0.5).mul_(2.0 - square).mul_(1.0 / math.sqrt(2.0 * math.pi))
        return torch.addcmul(grad_h * slope, grad_g, curvature)


def gelu_and_grad(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``gelu(z)`` and ``gelu'(z)`` together (one autograd node, once differentiable)."""
    return _GeluAndGrad.apply(z)


def forward(weights: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``f_theta(x)`` for weights ``[..., d_out, d_in]`` and inputs ``[..., n, d_in]`` -> ``[..., n, Dv]``."""
    a = x
    for l, w in enumerate(weights):
        z = a @ w.transpose(-1, -2)
        a = gelu(z) if l < len(weights) - 1 else z
    return a + x if len(weights) > 1 else a


def loss_grad_output(memory: str, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``dl/df`` at ``f = y``: ``-v`` for ``dla``, ``2 (y - v)`` for ``titans``."""
    return -v if memory == "dla" else 2.0 * (y - v)


def inner_loss(memory: str, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Per-token inner loss (summed over the last dim): ``-<y, v>`` or ``||y - v||^2``."""
    return -(y * v).sum(-1) if memory == "dla" else ((y - v) ** 2).sum(-1)


def key_gradients(
    memory: str, weights: Sequence[torch.Tensor], k: torch.Tensor, v: torch.Tensor
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Hand-derived per-token inner gradients at ``weights``, in rank-one factors.

    For every token ``j`` the gradient of ``l_j`` with respect to ``W_l`` is ``delta_{l,j} a_{l-1,j}^T``:
    forward ``a_0 = k``, ``z_l = W_l a_{l-1}``; backward ``delta_L = dl/df``,
    ``delta_{l-1} = (W_l^T delta_l) * gelu'(z_{l-1})`` (the residual adds nothing to weight gradients).

    Args:
        weights: ``[..., d_out, d_in]`` per layer; k: ``[..., n, Dk]``; v: ``[..., n, Dv]``.

    Returns:
        ``inputs`` (``a_{l-1}``, ``[..., n, d_in]`` per layer) and ``deltas`` (``[..., n, d_out]``).
    """
    inputs: list[torch.Tensor] = []
    slopes: list[torch.Tensor] = []
    a = k
    for l, w in enumerate(weights):
        inputs.append(a)
        a = a @ w.transpose(-1, -2)
        if l < len(weights) - 1:
            a, slope = gelu_and_grad(a)
            slopes.append(slope)
    y = a + k if len(weights) > 1 else a
    delta = loss_grad_output(memory, y, v)
    deltas = [delta]
    for l in range(len(weights) - 1, 0, -1):
        delta = (delta @ weights[l]) * slopes[l - 1]
        deltas.append(delta)
    return inputs, deltas[::-1]
