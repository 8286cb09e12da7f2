"""The sequential part of the deep-memory chunk path: the state after every chunk, hand-differentiated.

For chunk ``j`` with start weights ``W_l`` (momentum ``S_l``), keys ``k`` and values ``v`` ``[c, D]``,
the per-token gradients are rank one, ``delta_{l,i} a_{l-1,i}^T`` (:func:`network.key_gradients`, all at
the chunk start), and the end state is the last row of the unrolled rule (:mod:`mcrnn.ops.deep.chunk`):

    W_l' = A W_l + P S_l - (delta_l * m)^T a_{l-1},     S_l' = B S_l - (delta_l * m_S)^T a_{l-1},

with per-(batch, head) scalars ``A, P, B`` and per-token weights ``m, m_S`` [c] (``dla``: no ``S``,
``P = 0``). A chunk flagged in ``resets`` starts from the initial weights and zero momentum instead of
the previous chunk's end.

:class:`ChunkScan` runs that loop without recording an autograd graph and differentiates it by hand,
chunk by chunk in reverse: the update is linear in ``(W, S)`` and bilinear in ``(delta, a)``; the key
gradients are a forward and a backward pass of the memory MLP, whose adjoint needs ``gelu''``. Per
chunk this is a few large matmuls instead of the hundreds of small autograd nodes the same loop costs
when recorded, and the backward keeps only the stacked per-chunk tensors it needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mcrnn.ops.deep import network


def add_matmul(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """``acc + alpha * a @ b`` as one ``baddbmm`` over the flattened leading dims (no broadcasting)."""
    flat = torch.baddbmm(acc.flatten(0, -3), a.flatten(0, -3), b.flatten(0, -3), alpha=alpha)
    return flat.view(acc.shape)


@dataclass
class ChunkEnd:
    """End-state coefficients of every chunk: ``[n, B, H]`` scalars and ``[n, B, H, c]`` token weights."""

    retain: torch.Tensor  # A
    mix: torch.Tensor  # m_i = M_{end,i} eta_i
    carry: torch.Tensor | None = None  # P (titans)
    momentum_retain: torch.Tensor | None = None  # B
    momentum_mix: torch.Tensor | None = None  # m_S,i = (B_end / B_i) eta_i

    def tensors(self) -> list[torch.Tensor]:
        fields = (self.retain, self.mix, self.carry, self.momentum_retain, self.momentum_mix)
        return [x for x in fields if x is not None]

    def state(self, name: str, j: int) -> torch.Tensor:
        """Chunk ``j``'s scalar ``name`` as ``[B, H, 1, 1]`` (to scale ``[B, H, d_out, d_in]`` states)."""
        return getattr(self, name)[j, :, :, None, None]

    def token(self, name: str, j: int) -> torch.Tensor:
        """Chunk ``j``'s token weights ``name`` as ``[B, H, c, 1]`` (to scale ``[B, H, c, d]`` rows)."""
        return getattr(self, name)[j, ..., None]


@dataclass
class ScanResult:
    """Per-layer stacks over chunks (chunk dim first). ``weights``/``momentum`` ``[n + 1, B, H, d_out, d_in]``
    hold the initial state at 0 and the state after chunk ``j`` at ``j + 1``; ``inputs`` ``[n, B, H, c,
    d_in]`` (``inputs[0]`` are the keys) and ``deltas`` ``[n, B, H, c, d_out]`` are the rank-one factors
    of every chunk's key gradients."""

    weights: list[torch.Tensor]
    momentum: list[torch.Tensor] | None
    inputs: list[torch.Tensor]
    deltas: list[torch.Tensor]

    def starts(self, resets: Sequence[bool]) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """Start state of every chunk ``[n, B, H, ...]`` (views unless a chunk after the first resets)."""
        n_chunks = len(resets)
        if any(resets[1:]):
            index = [0 if reset else j for j, reset in enumerate(resets)]
            index = torch.tensor(index, device=self.weights[0].device)
            weights = [w.index_select(0, index) for w in self.weights]
            momentum = None if self.momentum is None else [m.index_select(0, index) for m in self.momentum]
            return weights, momentum
        weights = [w[:n_chunks] for w in self.weights]
        return weights, (None if self.momentum is None else [m[:n_chunks] for m in self.momentum])


def chunk_scan(
    memory: str,
    initial: Sequence[torch.Tensor],
    keys: torch.Tensor,
    values: torch.Tensor,
    ends: ChunkEnd,
    resets: Sequence[bool],
) -> ScanResult:
    """Run every chunk of ``keys``/``values`` ``[n, B, H, c, D]`` from ``initial`` (``[B, H, d_out, d_in]``
    per layer); ``resets[j]`` restarts chunk ``j`` from ``initial`` (``resets[0]`` must be true)."""
    if not resets[0]:
        raise ValueError("resets[0] must be True: the first chunk starts from the initial weights")
    depth = len(initial)
    out = ChunkScan.apply(memory, tuple(resets), depth, *initial, keys, values, *ends.tensors())
    weights, rest = list(out[:depth]), out[depth:]
    momentum = None
    if memory == "titans":
        momentum, rest = list(rest[:depth]), rest[depth:]
    inputs = [keys, *rest[: depth - 1]]
    return ScanResult(weights, momentum, inputs, list(rest[depth - 1 :]))


def _buffers(keys: torch.Tensor, initial: Sequence[torch.Tensor]) -> network.KeyGradients:
    """Empty ``[n, B, H, c, d]`` key-gradient factors for every chunk (``inputs[0]``: the keys)."""
    widths = [w.shape[-2] for w in initial]  # d_out per layer
    hidden = [keys.new_empty(*keys.shape[:-1], d) for d in widths[:-1]]
    return network.KeyGradients(
        [None, *hidden],
        [keys.new_empty(*keys.shape[:-1], d) for d in widths],
        [torch.empty_like(x) for x in hidden],
        [torch.empty_like(x) for x in hidden],
    )


def _chunk(terms: network.KeyGradients, j: int) -> network.KeyGradients:
    """Chunk ``j`` of stacked factors (views)."""
    pick = [[None if x is None else x[j] for x in xs] for xs in (terms.inputs, terms.deltas)]
    return network.KeyGradients(*pick, [x[j] for x in terms.pre_activations], [x[j] for x in terms.back_products])


def _flat(x: torch.Tensor) -> torch.Tensor:
    """``[..., m, n]`` -> ``[prod(...), m, n]`` (a view for the contiguous chunk slices used here)."""
    return x.reshape(-1, *x.shape[-2:])


def _bmm_into(
    out: torch.Tensor, acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor, alpha: float = 1.0
) -> torch.Tensor:
    """``out = acc + alpha * a @ b`` (``baddbmm`` over flattened leading dims, written into ``out``)."""
    torch.baddbmm(_flat(acc), _flat(a), _flat(b), alpha=alpha, out=_flat(out))
    return out


class ChunkScan(torch.autograd.Function):
    """States after every chunk (see the module docstring), with a hand-written backward."""

    @staticmethod
    def forward(ctx, memory: str, resets: tuple[bool, ...], depth: int, *tensors: torch.Tensor):  # noqa: ANN001, ANN205
        initial = list(tensors[:depth])
        keys, values = tensors[depth : depth + 2]
        ends = ChunkEnd(*tensors[depth + 2 :])  # in the order of ChunkEnd.tensors()
        titans = memory == "titans"
        n_chunks = keys.shape[0]
        states_w = [keys.new_empty(n_chunks + 1, *w.shape) for w in initial]
        states_s = [keys.new_zeros(n_chunks + 1, *w.shape) for w in initial] if titans else []
        for state, w in zip(states_w, initial, strict=True):
            state[0] = w
        terms = _buffers(keys, initial)
        for j in range(n_chunks):
            weights = initial if resets[j] else [w[j] for w in states_w]
            momentum = [s[0] if resets[j] else s[j] for s in states_s]
            at = network.key_gradients(memory, weights, keys[j], values[j], out=_chunk(terms, j))
            for l, w in enumerate(weights):
                # W' = A W + P S - (delta * m)^T a ;  S' = B S - (delta * m_S)^T a
                start = w * ends.state("retain", j)
                if titans:
                    start.addcmul_(momentum[l], ends.state("carry", j))
                scaled = at.deltas[l] * ends.token("mix", j)
                _bmm_into(states_w[l][j + 1], start, scaled.transpose(-1, -2), at.inputs[l], -1.0)
                if titans:
                    start = momentum[l] * ends.state("momentum_retain", j)
                    scaled = at.deltas[l] * ends.token("momentum_mix", j)
                    _bmm_into(states_s[l][j + 1], start, scaled.transpose(-1, -2), at.inputs[l], -1.0)
        ctx.memory, ctx.resets, ctx.depth = memory, resets, depth
        hidden = terms.inputs[1:]
        ctx.save_for_backward(
            *initial, keys, values, *ends.tensors(), *states_w, *states_s, *hidden, *terms.deltas,
            *terms.pre_activations, *terms.back_products,
        )  # fmt: skip
        return (*states_w, *states_s, *hidden, *terms.deltas)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads: torch.Tensor):  # noqa: ANN001, ANN205
        """Reverse loop over chunks carrying ``dL/d(start state)``; every part without a sequential
        dependence (GELU slopes and curvatures, scaled deltas, the coefficient gradients, which are inner
        products) is batched over all chunks outside the loop."""
        memory, resets, depth = ctx.memory, ctx.resets, ctx.depth
        titans, hidden = memory == "titans", depth - 1
        saved = list(ctx.saved_tensors)
        initial, (keys, values), saved = saved[:depth], saved[depth : depth + 2], saved[depth + 2 :]
        n_coef = 5 if titans else 2
        ends, saved = ChunkEnd(*saved[:n_coef]), saved[n_coef:]
        states_w, saved = saved[:depth], saved[depth:]
        states_s, saved = (saved[:depth], saved[depth:]) if titans else ([], saved)
        terms = network.KeyGradients(
            [keys, *saved[:hidden]],
            saved[hidden : hidden + depth],
            saved[hidden + depth : 2 * hidden + depth],
            saved[2 * hidden + depth :],
        )
        g_states_w, grads = grads[:depth], grads[depth:]
        g_states_s, grads = (grads[:depth], grads[depth:]) if titans else ((), grads)
        g_inputs, g_deltas = grads[:hidden], grads[hidden:]
        n_chunks = keys.shape[0]

        slopes = [network.gelu_slope(z) for z in terms.pre_activations]
        curvatures = [h * network.gelu_curvature(z) for h, z in zip(terms.back_products, terms.pre_activations, strict=True)]
        mix = ends.mix.unsqueeze(-1)
        scaled = [d * mix for d in terms.deltas]  # delta_l * m, [n, B, H, c, d_out]
        m_mix = ends.momentum_mix.unsqueeze(-1) if titans else None
        m_scaled = [d * m_mix for d in terms.deltas] if titans else []
        # per chunk: dL/d(end state) and a_l (dL/dX')^T, kept for the batched coefficient gradients
        g_end_w = [torch.empty_like(g[1:]) for g in states_w]
        g_end_s = [torch.empty_like(g[1:]) for g in states_s]
        back_w = [torch.empty_like(d) for d in terms.deltas]
        back_s = [torch.empty_like(d) for d in terms.deltas] if titans else []
        g_initial = [torch.zeros_like(w) for w in initial]
        g_keys, g_values = torch.empty_like(keys), torch.empty_like(values)
        carry_w = [g[n_chunks] for g in g_states_w]  # dL/d(state after chunk j): outputs + chunk j + 1
        carry_s = [g[n_chunks] for g in g_states_s]
        for j in range(n_chunks - 1, -1, -1):
            g_w = [g_end[j].copy_(c) for g_end, c in zip(g_end_w, carry_w, strict=True)]
            g_s = [g_end[j].copy_(c) for g_end, c in zip(g_end_s, carry_s, strict=True)]
            weights = initial if resets[j] else [w[j] for w in states_w]
            at = _chunk(terms, j)
            at.inputs[0] = keys[j]
            # the update's adjoint: dL/da_l = -(delta_l m) g_l^T..., dL/ddelta_l = -m a_l g_l^T
            g_a: list[torch.Tensor] = []
            g_d: list[torch.Tensor] = []
            for l in range(depth):
                back = torch.matmul(at.inputs[l], g_w[l].transpose(-1, -2), out=back_w[l][j])
                g_d.append(torch.addcmul(g_deltas[l][j], ends.token("mix", j), back, value=-1.0))
                g_a.append(torch.matmul(scaled[l][j], g_w[l]).neg_() if l == 0 else
                           _bmm_into(torch.empty_like(at.inputs[l]), g_inputs[l - 1][j], scaled[l][j], g_w[l], -1.0))  # fmt: skip
                if titans:
                    back = torch.matmul(at.inputs[l], g_s[l].transpose(-1, -2), out=back_s[l][j])
                    g_d[l].addcmul_(ends.token("momentum_mix", j), back, value=-1.0)
                    g_a[l] = torch.baddbmm(_flat(g_a[l]), _flat(m_scaled[l][j]), _flat(g_s[l]), alpha=-1.0).view_as(g_a[l])
            g_start_w = [g * ends.state("retain", j) for g in g_w]
            if titans:
                g_start_s = [
                    torch.addcmul(gs * ends.state("momentum_retain", j), gw, ends.state("carry", j))
                    for gw, gs in zip(g_w, g_s, strict=True)
                ]
            g_keys[j], g_values[j] = _key_gradients_backward(
                memory, weights, at, [x[j] for x in slopes], [x[j] for x in curvatures], g_a, g_d, g_start_w
            )
            # dL/d(state after chunk j - 1): its output gradient, plus chunk j's start unless it reset
            carry_w = [g[j] for g in g_states_w]
            carry_s = [g[j] for g in g_states_s]
            if resets[j]:
                for g_init, g in zip(g_initial, g_start_w, strict=True):
                    g_init += g
            else:
                carry_w = [c + g for c, g in zip(carry_w, g_start_w, strict=True)]
                if titans:
                    carry_s = [c + g for c, g in zip(carry_s, g_start_s, strict=True)]
        for g_init, g in zip(g_initial, carry_w, strict=True):
            g_init += g  # state 0 is the initial weights
        # coefficient gradients: inner products with the start state (reset chunks start from initial)
        starts = ScanResult(states_w, states_s or None, [], []).starts(resets)
        g_ends = ChunkEnd(
            _inner(g_end_w, starts[0]),
            -sum(torch.linalg.vecdot(d, b) for d, b in zip(terms.deltas, back_w, strict=True)),
        )
        if titans:
            start_s = starts[1]
            g_ends.carry = _inner(g_end_w, start_s)
            g_ends.momentum_retain = _inner(g_end_s, start_s)
            g_ends.momentum_mix = -sum(torch.linalg.vecdot(d, b) for d, b in zip(terms.deltas, back_s, strict=True))
        return (None, None, None, *g_initial, g_keys, g_values, *g_ends.tensors())


def _inner(xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum_l <x_l, y_l>`` over the last two dims: per-layer ``[..., d, d]`` -> ``[...]``."""
    return sum(torch.linalg.vecdot(x.flatten(-2), y.flatten(-2)) for x, y in zip(xs, ys, strict=True))


def _key_gradients_backward(
    memory: str,
    weights: Sequence[torch.Tensor],
    at: network.KeyGradients,
    slopes: Sequence[torch.Tensor],
    curvatures: Sequence[torch.Tensor],
    g_inputs: list[torch.Tensor],
    g_deltas: list[torch.Tensor],
    g_weights: list[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adjoint of :func:`network.key_gradients`: adds into ``g_weights``; returns ``(g_k, g_v)``.

    Reverse of the delta recursion ``delta_l = back_l * gelu'(z_l)``, ``back_l = delta_{l+1} W_{l+1}``
    (lowest layer first, so each ``g_deltas[l]`` is complete when used; ``curvatures[l] = back_l
    gelu''(z_l)``), then of ``dl/df`` (``2 (f - v)`` or ``-v``), then of the forward
    ``z_l = a_{l-1} W_l^T``, ``a_l = gelu(z_l)``, ``f = z_L (+ k)``.
    """
    depth = len(weights)
    g_pre = []  # gradient reaching z_l through the slope in the delta recursion
    for l in range(depth - 1):
        g_back = g_deltas[l] * slopes[l]
        g_pre.append(g_deltas[l] * curvatures[l])
        g_deltas[l + 1] = torch.baddbmm(
            _flat(g_deltas[l + 1]), _flat(g_back), _flat(weights[l + 1]).transpose(-1, -2)
        ).view_as(g_deltas[l + 1])
        g_weights[l + 1] = torch.baddbmm(
            _flat(g_weights[l + 1]), _flat(at.deltas[l + 1]).transpose(-1, -2), _flat(g_back)
        ).view_as(g_weights[l + 1])
    # dL/df = 2 g_delta_L for titans (the 2 goes into alpha); dla's dl/df = -v leaves the last layer unused
    g_z, scale = (None, 1.0) if memory == "dla" else (g_deltas[-1], 2.0)
    for l in range(depth - 1, -1, -1):
        if g_z is not None:
            g_weights[l] = torch.baddbmm(
                _flat(g_weights[l]), _flat(g_z).transpose(-1, -2), _flat(at.inputs[l]), alpha=scale
            ).view_as(g_weights[l])
            g_inputs[l] = torch.baddbmm(
                _flat(g_inputs[l]), _flat(g_z), _flat(weights[l]), alpha=scale
            ).view_as(g_inputs[l])
        if l > 0:
            g_z, scale = torch.addcmul(g_pre[l - 1], g_inputs[l], slopes[l - 1]), 1.0
    if memory == "dla":
        return g_inputs[0], -g_deltas[-1]
    g_v = g_deltas[-1] * -2.0
    g_key = g_inputs[0] if depth == 1 else torch.add(g_inputs[0], g_deltas[-1], alpha=2.0)  # f = z_L + k
    return g_key, g_v
