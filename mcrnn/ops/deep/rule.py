"""The inner update rule of the deep memories (DESIGN.md §6), one token at a time.

With ``theta_0`` the weights at the start of the token's inner chunk (every gradient of a chunk is taken
there) and the rates of :class:`Rates`:

- ``dla``:    ``theta_t = a_t theta_{t-1} - eta_t grad l_t(theta_0)``, ``l_t = -<f(k_t), v_t>``;
- ``titans``: ``S_t = b_t S_{t-1} - eta_t grad l_t(theta_0)``, ``theta_t = a_t theta_{t-1} + S_t``,
  ``l_t = ||f(k_t) - v_t||^2``.

:func:`update` is the one retention/momentum update; the definition's step :func:`write_token` feeds it
gradients by autograd (keeping the graph, so the definition has its own gradients) and the decoding step
:func:`write_step` the hand-derived ones of :func:`network.key_gradients`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mcrnn.ops.deep import network

Weights = list[torch.Tensor]


@dataclass(frozen=True)
class Rates:
    """The per-token rates of the inner rule.

    Attributes:
        eta: step size ``eta_t >= 0``; alpha: retention ``a_t`` in [0, 1]; momentum: (``titans``) the
            momentum ``b_t`` in [0, 1], None for ``dla``. Each [B, T, H] ([B, H] for one token).
        mask: [B, T] bool ([B] for one token), the tokens that write (a masked token is an identity step:
            no write, retention or momentum change), or None (every token writes).
    """

    eta: torch.Tensor
    alpha: torch.Tensor
    momentum: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    def at(self, t: int) -> Rates:
        """The rates of token ``t``."""
        return self.span(t)

    def span(self, start: int | slice) -> Rates:
        """The rates of the tokens ``start`` (an index or a slice) along time."""
        pick = (slice(None), start)
        return Rates(
            self.eta[pick],
            self.alpha[pick],
            None if self.momentum is None else self.momentum[pick],
            None if self.mask is None else self.mask[pick],
        )

    def gates(self) -> tuple[torch.Tensor, ...]:
        """The floating rates (``eta``, ``alpha`` and, titans, ``momentum``)."""
        return (self.eta, self.alpha) if self.momentum is None else (self.eta, self.alpha, self.momentum)


def update(
    weights: Weights, momentum: Weights | None, grads: Weights, rates: Rates
) -> tuple[Weights, Weights | None]:
    """``(theta_t, S_t)`` from ``(theta_{t-1}, S_{t-1})`` and the token's gradient ``grads`` (per layer
    ``[B, H, d_out, d_in]``), the rates of one token ([B, H], mask [B]); ``momentum`` None for ``dla``."""
    step, retain = rates.eta[..., None, None], rates.alpha[..., None, None]
    keep = None if rates.mask is None else rates.mask[:, None, None, None]
    if momentum is not None:
        carry = rates.momentum[..., None, None]
        new_momentum = [carry * m - step * g for m, g in zip(momentum, grads, strict=True)]
        new_weights = [retain * w + m for w, m in zip(weights, new_momentum, strict=True)]
        momentum = where_kept(keep, new_momentum, momentum)
    else:
        new_weights = [retain * w - step * g for w, g in zip(weights, grads, strict=True)]
    return where_kept(keep, new_weights, weights), momentum


def write_token(
    memory: str,
    weights: Weights,
    momentum: Weights | None,
    chunk_start: Weights,
    k: torch.Tensor,
    v: torch.Tensor,
    rates: Rates,
) -> tuple[Weights, Weights | None]:
    """The definition's step: :func:`update` with the gradient at ``chunk_start`` (``theta_0``) by autograd;
    ``k, v`` [B, H, D], ``rates`` of one token."""
    return update(weights, momentum, _autograd_gradients(memory, chunk_start, k, v), rates)


def write_step(
    memory: str,
    weights: Weights,
    momentum: Weights | None,
    chunk_start: Weights,
    k: torch.Tensor,
    v: torch.Tensor,
    rates: Rates,
) -> tuple[Weights, Weights | None]:
    """The decoding step: :func:`update` with the hand-derived gradient at ``chunk_start``; ``k, v``
    [B, H, D], ``rates`` of one token."""
    terms = network.key_gradients(memory, chunk_start, k.unsqueeze(-2), v.unsqueeze(-2))
    grads = [d.transpose(-1, -2) @ a for d, a in zip(terms.deltas, terms.inputs, strict=True)]
    return update(weights, momentum, grads, rates)


def where_kept(keep: torch.Tensor | None, new: Weights, old: Weights) -> Weights:
    """``new`` where ``keep`` (``None``: everywhere), else ``old``, per layer."""
    if keep is None:
        return new
    return [torch.where(keep, n, o) for n, o in zip(new, old, strict=True)]


def _autograd_gradients(memory: str, weights: Weights, k: torch.Tensor, v: torch.Tensor) -> Weights:
    """``grad_theta l(theta; k, v)`` at ``weights`` [B, H, ...] by autograd, keeping the graph."""
    with torch.enable_grad():
        at = [w if w.requires_grad else w.detach().requires_grad_() for w in weights]
        loss = network.inner_loss(memory, network.forward(at, k.unsqueeze(-2)), v.unsqueeze(-2)).sum()
        return list(torch.autograd.grad(loss, at, create_graph=True))
