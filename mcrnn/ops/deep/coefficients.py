"""The per-chunk coefficients of the deep memories' chunked rule, shared by every segmentation.

For one chunk with retention ``a``, momentum retention ``b`` and step size ``eta`` (see
:mod:`mcrnn.ops.deep.chunk` for the unrolled rule): the prefix products ``A_t``, ``B_t``, the decay
matrices ``D_A``, ``D_B`` (:class:`GateProducts`, exact for gates of 0) and the read/end coefficients
(:func:`chunk_coefficients`); :func:`masked_rates` makes a masked token an identity step and
:func:`chunked` puts ``[B, T, H, ...]`` tensors in the chunk-major layout ``[n, B, H, c, ...]``.
"""

from __future__ import annotations

import torch

from mcrnn.ops.deep.read import ChunkCoefficients
from mcrnn.ops.deep.rule import Rates
from mcrnn.ops.deep.scan import ChunkEnd


class GateProducts(torch.autograd.Function):
    """Products of a gate over the token ranges of a chunk, differentiated without dividing by a gate.

    For gates ``x`` [..., c] (in [0, 1]) returns the prefix products and the decay matrix

        A_t = prod_{r<=t} x_r  [..., c],    D[t, j] = prod_{j<r<=t} x_r (j <= t), else 0  [..., c, c]

    (``D[t, t] = 1``), both formed by cumulative products (no logarithms: a zero gate is exact).
    The product over a range with ``x_m`` left out splits at ``m``: ``dD[t, j]/dx_m = D[t, m]
    D[m - 1, j]`` and ``dA_t/dx_m = D[t, m] A_{m - 1}`` (``j < m <= t``; ``A_{-1} = 1``,
    ``D[-1, .] = 0``), so with ``G_A = dL/dA`` and ``G_D = dL/dD``

        dL/dx_m = A_{m-1} (D^T G_A)_m + sum_j (D^T G_D)[m, j] D[m - 1, j],

    two batched matmuls, exact to rounding for any gate, zero included (autograd through
    ``exp(cumsum(log x))`` divides by ``x`` and cancels terms of size 1 to form terms of size ``x``).
    """

    @staticmethod
    def forward(ctx, gates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
        size = gates.shape[-1]
        upper = torch.ones(size, size, dtype=torch.bool, device=gates.device).triu()  # j >= t
        factors = torch.where(upper, 1.0, gates.unsqueeze(-1))  # [t, j]: x_t where t > j
        decay = torch.cumprod(factors, dim=-2).masked_fill_(upper.triu(1), 0.0)
        prefix = torch.cumprod(gates, dim=-1)
        ctx.save_for_backward(prefix, decay)
        return prefix, decay

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_prefix: torch.Tensor, g_decay: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        prefix, decay = ctx.saved_tensors
        before = torch.nn.functional.pad(prefix[..., :-1], (1, 0), value=1.0)  # A_{m-1}
        above = torch.nn.functional.pad(decay[..., :-1, :], (0, 0, 1, 0))  # D[m-1, j]
        g_gates = (decay.transpose(-1, -2) @ g_decay).mul_(above).sum(-1)
        return g_gates.add_((g_prefix.unsqueeze(-2) @ decay).squeeze(-2).mul_(before))


def chunk_coefficients(
    eta: torch.Tensor,
    alpha: torch.Tensor,
    beta: torch.Tensor | None,
    last: torch.Tensor,
    momentum_gate: torch.Tensor | None = None,
) -> tuple[ChunkCoefficients, ChunkEnd]:
    """Coefficients for gates ``[n, B, H, c]`` (see the module docstring) and each chunk's end.

    ``last`` [n] is the index of each chunk's last real token (``c - 1`` but in a padded final chunk).
    ``momentum_gate`` [n, B, H, c] (titans; ``None``: 1) scales the momentum a token adds to the
    weights, ``theta_t = a_t theta_{t-1} + m_t S_t``: then ``P_t = sum_{j<=t} (A_t/A_j) m_j B_j`` and
    ``M = D_A diag(m) D_B`` (a masked token has ``m = 0``, ``a = b = 1``, ``eta = 0``: an identity step).
    """
    retain, decay_a = GateProducts.apply(alpha)
    carry = decay_b = momentum_retain = None
    if beta is None:
        mix = decay_a * eta.unsqueeze(-2)
    else:
        momentum_retain, decay_b = GateProducts.apply(beta)
        into = decay_a if momentum_gate is None else decay_a * momentum_gate.unsqueeze(-2)
        carry = (into @ momentum_retain.unsqueeze(-1)).squeeze(-1)
        mix = (into @ decay_b) * eta.unsqueeze(-2)
    pick = last.view(-1, 1, 1, 1).expand(*eta.shape[:-1], 1)

    def at(x: torch.Tensor) -> torch.Tensor:  # [n, B, H, c] -> [n, B, H] at each chunk's end
        return x.gather(-1, pick).squeeze(-1)

    def row(x: torch.Tensor) -> torch.Tensor:  # [n, B, H, c, c] -> [n, B, H, c], row ``last``
        return x.gather(-2, pick.unsqueeze(-1).expand(*x.shape[:-2], 1, x.shape[-1])).squeeze(-2)

    if beta is None:
        return ChunkCoefficients(retain, mix), ChunkEnd(at(retain), row(mix))
    end = ChunkEnd(at(retain), row(mix), at(carry), at(momentum_retain), row(decay_b * eta.unsqueeze(-2)))
    return ChunkCoefficients(retain, mix, carry), end


def masked_rates(
    rates: Rates,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(eta, alpha, b, momentum_gate)`` [B, T, H] with every masked token an identity step: ``eta = 0``,
    ``alpha = b = 1`` (``b`` the titans momentum) and momentum gate 0 (``None`` without a mask or
    momentum)."""
    eta, alpha, momentum, mask = rates.eta, rates.alpha, rates.momentum, rates.mask
    if mask is None:
        return eta, alpha, momentum, None
    keep = mask.unsqueeze(-1)  # [B, T, 1]
    eta, alpha = torch.where(keep, eta, 0.0), torch.where(keep, alpha, 1.0)
    if momentum is None:
        return eta, alpha, None, None
    return eta, alpha, torch.where(keep, momentum, 1.0), keep.expand_as(momentum).to(momentum.dtype)


def chunked(x: torch.Tensor, pad: int, chunk_size: int, value: float) -> torch.Tensor:
    """``[B, T, H, ...]`` -> chunk-major ``[n, B, H, c, ...]`` (``T`` padded with ``value``)."""
    if pad:
        widths = [0, 0] * (x.dim() - 2) + [0, pad]
        x = torch.nn.functional.pad(x, widths, value=value)
    x = x.unflatten(1, (-1, chunk_size))  # [B, n, c, H, ...]
    return x.permute(1, 0, 3, 2, *range(4, x.dim())).contiguous()
