"""The online read of the deep memories: every token reads its own per-token weights, and its adjoint.

Inside a chunk with start weights ``W_l`` (momentum ``S_l``) and the rank-one gradient factors
``a_{l-1,i}``, ``delta_{l,i}`` of its tokens (:func:`network.key_gradients`), token ``t`` reads layer
``l`` of its weights ``theta_t`` on an input ``x_t`` as (:mod:`mcrnn.ops.deep.chunk` derives it)

    z_{l,t} = A_t W_l x_t + P_t S_l x_t - sum_{i<=t} M_{ti} (a_{l-1,i} . x_t) delta_{l,i},

attention-like, with no per-token weights: :class:`ChunkCoefficients` holds ``A_t``, ``P_t`` and the
lower-triangular ``M_{ti} eta_i``. :func:`online_read` chains the layers through GELU (plus the
residual); :func:`read_backward` is its hand-written adjoint for one chunk, used by the chunk scan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mcrnn.ops.deep import network
from mcrnn.ops.deep.batched import accumulate, accumulate_matmul, add_matmul, unbind_chunks


@dataclass
class ChunkCoefficients:
    """Per-token read coefficients of every chunk: ``A_t``, ``P_t`` (titans) ``[n, B, H, c]`` and
    ``M_{ti} eta_i`` ``[n, B, H, c, c]`` (lower triangular)."""

    retain: torch.Tensor
    mix: torch.Tensor
    carry: torch.Tensor | None = None

    def tensors(self) -> list[torch.Tensor]:
        """The non-``None`` fields in declaration order (``ChunkCoefficients(*tensors())`` rebuilds it)."""
        return [x for x in (self.retain, self.mix, self.carry) if x is not None]

    def per_chunk(self) -> list[ChunkCoefficients]:
        """Views per chunk (chunk-major tensors)."""
        n_chunks = self.retain.shape[0]
        fields = [unbind_chunks(x, n_chunks) for x in (self.retain, self.mix, self.carry)]
        return [ChunkCoefficients(*row) for row in zip(*fields, strict=True)]


def online_layer(
    layer: int,
    x: torch.Tensor,
    weights: Sequence[torch.Tensor],
    momentum: Sequence[torch.Tensor] | None,
    inputs: Sequence[torch.Tensor],
    deltas: Sequence[torch.Tensor],
    coef: ChunkCoefficients,
) -> torch.Tensor:
    """``W_{l,t} x_t`` for every token of the chunk(s), ``x`` [..., c, d_in] -> [..., c, d_out] (``weights``
    per chunk, or one ``[B, H, d_out, d_in]`` set shared by chunks ``x`` [n, B, H, c, d_in]).

    The per-token ``A_t`` and ``P_t`` scale whichever side of their matmul is narrower.
    """
    retain = coef.retain.unsqueeze(-1)
    carry = None if momentum is None else coef.carry.unsqueeze(-1)
    if x.shape[-1] <= weights[layer].shape[-2]:
        out = _apply(weights[layer], retain * x)
        if carry is not None:
            out = add_matmul(out, carry * x, momentum[layer].transpose(-1, -2))
    else:
        out = retain * _apply(weights[layer], x)
        if carry is not None:
            out = torch.addcmul(out, carry, x @ momentum[layer].transpose(-1, -2))
    scores = (x @ inputs[layer].transpose(-1, -2)) * coef.mix
    return add_matmul(out, scores, deltas[layer], alpha=-1.0)


def _apply(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``x W^T``: per chunk (``W`` [n, B, H, d_out, d_in], ``x`` [n, B, H, c, d_in]), or one ``W``
    [B, H, d_out, d_in] for every chunk, as one matmul over all the chunks' rows (broadcasting ``W``
    over the chunks would copy it once per chunk)."""
    if weight.dim() == x.dim():
        return x @ weight.transpose(-1, -2)
    rows = x.permute(1, 2, 0, 3, 4).flatten(2, 3)  # [B, H, n * c, d_in]
    return (rows @ weight.transpose(-1, -2)).unflatten(2, (x.shape[0], -1)).permute(2, 0, 1, 3, 4)


def online_read(
    query: torch.Tensor,
    weights: Sequence[torch.Tensor],
    momentum: Sequence[torch.Tensor] | None,
    inputs: Sequence[torch.Tensor],
    deltas: Sequence[torch.Tensor],
    coef: ChunkCoefficients,
    pre_activations: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """``f_{theta_t}(q_t)`` for every token, ``[..., c, Dk] -> [..., c, Dv]``; the hidden layers'
    pre-activations are also written into ``pre_activations`` when given (for the backward)."""
    a = query
    for l in range(len(weights)):
        z = online_layer(l, a, weights, momentum, inputs, deltas, coef)
        if l < len(weights) - 1:
            if pre_activations is not None:
                pre_activations[l].copy_(z)
            a = network.gelu(z)
        else:
            a = z
    return a + query if len(weights) > 1 else a


def read_backward(
    g_out: torch.Tensor,
    query: torch.Tensor,
    weights: Sequence[torch.Tensor],
    momentum: Sequence[torch.Tensor],
    at: network.KeyGradients,
    coef: ChunkCoefficients,
    pre_activations: Sequence[torch.Tensor],
    g_coef: ChunkCoefficients,
    g_weights: list[torch.Tensor | None],
    g_momentum: list[torch.Tensor | None],
    g_a: list[torch.Tensor | None],
    g_d: list[torch.Tensor | None],
) -> torch.Tensor:
    """Adjoint of :func:`online_read` for one chunk: accumulates into the gradient lists, writes the
    coefficient gradients of the chunk into ``g_coef``, returns ``dL/dq``.

    Per layer, with ``u = x W^T``, ``r = x a^T`` and ``g`` the gradient of ``z``:
    ``dA = rowsum(g W * x)``, ``dP = rowsum(g S * x)``, ``dW = (A g)^T x``, ``dS = g^T (P x)``,
    ``ddelta = -(r * M)^T g``, ``dM = -(g delta^T) * r``, ``da = (dr)^T x`` with ``dr = -(g delta^T) * M``,
    ``dx = A (g W) + P (g S) + dr a``; then through GELU to the layer below.
    """
    depth = len(weights)
    retain, carry = coef.retain.unsqueeze(-1), None if coef.carry is None else coef.carry.unsqueeze(-1)
    g_z = g_out
    g_query = g_out if depth > 1 else None  # the residual f = z_L + q
    g_retain = torch.zeros_like(coef.retain)
    g_carry = torch.zeros_like(coef.retain) if carry is not None else None
    g_mix = torch.zeros_like(coef.mix)
    for l in range(depth - 1, -1, -1):
        x = query if l == 0 else network.gelu(pre_activations[l - 1])
        through_w = torch.bmm(g_z, weights[l])  # [c, d_in]
        g_retain += torch.linalg.vecdot(through_w, x)
        g_x = through_w.mul_(retain)
        g_weights[l] = accumulate_matmul(g_weights[l], (g_z * retain).transpose(-1, -2), x)
        if carry is not None:
            through_s = torch.bmm(g_z, momentum[l])
            g_carry += torch.linalg.vecdot(through_s, x)
            g_x.addcmul_(through_s, carry)
            g_momentum[l] = accumulate_matmul(g_momentum[l], g_z.transpose(-1, -2), x * carry)
        raw = torch.bmm(x, at.inputs[l].transpose(-1, -2))  # [c, c]
        g_d[l] = accumulate_matmul(g_d[l], (raw * coef.mix).transpose(-1, -2), g_z, -1.0)
        g_scores = torch.bmm(g_z, at.deltas[l].transpose(-1, -2)).neg_()
        g_mix.addcmul_(g_scores, raw)
        g_raw = g_scores.mul_(coef.mix)
        g_x = accumulate_matmul(g_x, g_raw, at.inputs[l])
        g_a[l] = accumulate_matmul(g_a[l], g_raw.transpose(-1, -2), x)
        if l > 0:
            g_z = torch.ops.aten.gelu_backward(g_x, pre_activations[l - 1])
        else:
            g_query = accumulate(g_query, g_x)
    g_coef.retain.copy_(g_retain)
    g_coef.mix.copy_(g_mix)
    if g_carry is not None:
        g_coef.carry.copy_(g_carry)
    return g_query
