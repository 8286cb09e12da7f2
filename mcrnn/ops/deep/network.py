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
from dataclasses import dataclass

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


def gelu_curvature(z: torch.Tensor) -> torch.Tensor:
    """``gelu''(z) = phi(z) (2 - z^2)``."""
    square = z * z
    return torch.exp(square * -0.5).mul_(2.0 - square).mul_(1.0 / math.sqrt(2.0 * math.pi))


def forward(weights: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``f_theta(x)`` for weights ``[..., d_out, d_in]`` and inputs ``[..., n, d_in]`` -> ``[..., n, Dv]``."""
    a = x
    for l, w in enumerate(weights):
        z = a @ w.transpose(-1, -2)
        a = gelu(z) if l < len(weights) - 1 else z
    return a + x if len(weights) > 1 else a


def inner_loss(memory: str, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Per-token inner loss (summed over the last dim): ``-<y, v>`` or ``||y - v||^2``."""
    return -(y * v).sum(-1) if memory == "dla" else ((y - v) ** 2).sum(-1)


@dataclass
class KeyGradients:
    """Rank-one factors of the per-token inner gradients and what their backward needs.

    ``inputs[l]`` (``a_{l-1}``, ``[..., n, d_in]``) and ``deltas[l]`` (``[..., n, d_out]``) per layer;
    ``pre_activations[l] = z_l`` and ``back_products[l] = delta_{l+1} W_{l+1}`` for the hidden layers
    ``l < L - 1`` (so ``deltas[l] = back_products[l] * gelu'(z_l)``).
    """

    inputs: list[torch.Tensor]
    deltas: list[torch.Tensor]
    pre_activations: list[torch.Tensor]
    back_products: list[torch.Tensor]


def key_gradients(
    memory: str,
    weights: Sequence[torch.Tensor],
    k: torch.Tensor,
    v: torch.Tensor,
    out: KeyGradients | None = None,
) -> KeyGradients:
    """Hand-derived per-token inner gradients at ``weights``, in rank-one factors.

    For every token ``j`` the gradient of ``l_j`` with respect to ``W_l`` is ``delta_{l,j} a_{l-1,j}^T``:
    forward ``a_0 = k``, ``z_l = W_l a_{l-1}``; backward ``delta_L = dl/df``,
    ``delta_{l-1} = (W_l^T delta_l) * gelu'(z_{l-1})`` (the residual adds nothing to weight gradients).
    ``dla``'s ``dl/df = -v`` does not depend on ``f``, so its last layer is never evaluated.

    Args:
        weights: ``[..., d_out, d_in]`` per layer; k: ``[..., n, Dk]``; v: ``[..., n, Dv]``.
        out: buffers of the same structure to write into (``inputs[0]`` unused: it is ``k``), for the
            chunk scan (:mod:`mcrnn.ops.deep.scan`), which has its own backward; ``None`` (allocate)
            is differentiable by autograd.
    """
    hidden = len(weights) - 1
    buffers = out or KeyGradients(
        [None] * (hidden + 1), [None] * (hidden + 1), [None] * hidden, [None] * hidden
    )
    inputs, pre_activations = [k], []
    for l, w in enumerate(weights[:-1]):
        pre_activations.append(torch.matmul(inputs[l], w.transpose(-1, -2), out=buffers.pre_activations[l]))
        if buffers.inputs[l + 1] is None:
            inputs.append(torch.nn.functional.gelu(pre_activations[l]))
        else:
            inputs.append(torch._C._nn.gelu(pre_activations[l], out=buffers.inputs[l + 1]))
    if memory == "dla":
        delta = torch.neg(v, out=buffers.deltas[-1])
    else:
        y = inputs[-1] @ weights[-1].transpose(-1, -2)
        target = v - k if hidden else v  # f = y + k for a residual memory
        delta = torch.sub(y, target, out=buffers.deltas[-1]).mul_(2.0)
    deltas = [delta]
    back_products: list[torch.Tensor] = []
    for l in range(hidden - 1, -1, -1):
        back_products.insert(0, torch.matmul(deltas[0], weights[l + 1], out=buffers.back_products[l]))
        if buffers.deltas[l] is None:
            deltas.insert(0, torch.ops.aten.gelu_backward(back_products[0], pre_activations[l]))
        else:
            deltas.insert(
                0,
                torch.ops.aten.gelu_backward.grad_input(
                    back_products[0], pre_activations[l], grad_input=buffers.deltas[l]
                ),
            )
    return KeyGradients(inputs, deltas, pre_activations, back_products)
