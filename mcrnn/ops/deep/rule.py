"""The inner update rule of the deep memories (DESIGN.md §6), one token at a time.

With ``theta_0`` the weights at the start of the token's inner chunk (every gradient of a chunk is taken
there):

- ``dla``:    ``theta_t = a_t theta_{t-1} - eta_t grad l_t(theta_0)``, ``l_t = -<f(k_t), v_t>``;
- ``titans``: ``S_t = b_t S_{t-1} - eta_t grad l_t(theta_0)``, ``theta_t = a_t theta_{t-1} + S_t``,
  ``l_t = ||f(k_t) - v_t||^2``.

:func:`write_token` is the definition's step (gradients by autograd, keeping the graph);
:func:`write_step` is the decoding step (the hand-derived gradients of :func:`network.key_gradients`).
"""

from __future__ import annotations

import torch

from mcrnn.ops.deep import network


def write_token(
    memory: str,
    weights: list[torch.Tensor],
    momentum: list[torch.Tensor] | None,
    chunk_start: list[torch.Tensor],
    k: torch.Tensor,
    v: torch.Tensor,
    eta: torch.Tensor,
    alpha: torch.Tensor,
    beta: torch.Tensor | None,
    keep: torch.Tensor | None,
    t: int,
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """Token ``t`` of the chunked rule: ``(theta_t, S_t)`` from ``(theta_{t-1}, S_{t-1})`` with the gradient
    at ``chunk_start`` (``theta_0``); ``k, v`` [B, T, H, D], rates [B, T, H], ``keep`` [B] bool or None
    (a token not kept is an identity step)."""
    grads = _autograd_gradients(memory, chunk_start, k[:, t], v[:, t])
    step = eta[:, t, :, None, None]
    retain = alpha[:, t, :, None, None]
    keep = None if keep is None else keep[:, None, None, None]  # [B, 1, 1, 1]
    if momentum is not None:
        new_momentum = [
            beta[:, t, :, None, None] * m - step * g for m, g in zip(momentum, grads, strict=True)
        ]
        new_weights = [retain * w + m for w, m in zip(weights, new_momentum, strict=True)]
        momentum = where_kept(keep, new_momentum, momentum)
    else:
        new_weights = [retain * w - step * g for w, g in zip(weights, grads, strict=True)]
    return where_kept(keep, new_weights, weights), momentum


def where_kept(
    keep: torch.Tensor | None, new: list[torch.Tensor], old: list[torch.Tensor]
) -> list[torch.Tensor]:
    """``new`` where ``keep`` (``None``: everywhere), else ``old``, per layer."""
    if keep is None:
        return new
    return [torch.where(keep, n, o) for n, o in zip(new, old, strict=True)]


def _autograd_gradients(
    memory: str, weights: list[torch.Tensor], k: torch.Tensor, v: torch.Tensor
) -> list[torch.Tensor]:
    """``grad_theta l(theta; k, v)`` at ``weights`` [B, H, ...] by autograd, keeping the graph."""
    with torch.enable_grad():
        at = [w if w.requires_grad else w.detach().requires_grad_() for w in weights]
        loss = network.inner_loss(memory, network.forward(at, k.unsqueeze(-2)), v.unsqueeze(-2)).sum()
        return list(torch.autograd.grad(loss, at, create_graph=True))


def write_step(
    memory: str,
    weights: list[torch.Tensor],
    momentum: list[torch.Tensor] | None,
    chunk_start: list[torch.Tensor],
    k: torch.Tensor,
    v: torch.Tensor,
    eta: torch.Tensor,
    alpha: torch.Tensor,
    beta: torch.Tensor | None,
    mask: torch.Tensor | None,
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """``(theta_t, S_t)`` after one token of the chunked rule, every gradient at ``chunk_start``
    (per layer ``[B, H, d_out, d_in]``); ``k, v`` [B, H, D], rates [B, H], ``mask`` [B] (or ``None``)."""
    terms = network.key_gradients(memory, chunk_start, k.unsqueeze(-2), v.unsqueeze(-2))
    grads = [d.transpose(-1, -2) @ a for d, a in zip(terms.deltas, terms.inputs, strict=True)]
    step, retain = eta[..., None, None], alpha[..., None, None]
    keep = None if mask is None else mask[:, None, None, None]
    if momentum is not None:
        new_momentum = [beta[..., None, None] * m - step * g for m, g in zip(momentum, grads, strict=True)]
        new_weights = [retain * w + m for w, m in zip(weights, new_momentum, strict=True)]
        momentum = where_kept(keep, new_momentum, momentum)
    else:
        new_weights = [retain * w - step * g for w, g in zip(weights, grads, strict=True)]
    return where_kept(keep, new_weights, weights), momentum
