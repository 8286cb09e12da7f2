"""The sequential part of the deep-memory chunk path, fused with the online read and hand-differentiated.

For chunk ``j`` with start weights ``W_l`` (momentum ``S_l``), keys ``k`` and values ``v`` ``[c, D]``,
the per-token gradients are rank one, ``delta_{l,i} a_{l-1,i}^T`` (:func:`network.key_gradients`, all at
the chunk start); the end state is the last row of the unrolled rule (:mod:`mcrnn.ops.deep.chunk`):

    W_l' = A W_l + P S_l - (delta_l * m)^T a_{l-1},     S_l' = B S_l - (delta_l * m_S)^T a_{l-1},

with per-(batch, head) scalars ``A, P, B`` and per-token weights ``m, m_S`` [c] (:class:`ChunkEnd`;
``dla``: no ``S``, ``P = 0``), and token ``t`` of the chunk reads layer ``l`` of its own weights as

    z_{l,t} = A_t W_l x_t + P_t S_l x_t - sum_{i<=t} M_{ti} (a_{l-1,i} . x_t) delta_{l,i}

(:mod:`mcrnn.ops.deep.read`, which also holds its adjoint). A chunk at a cache point can restart
from the initial weights and zero momentum (``init="independent"``).

:class:`ChunkScan` runs the chunks in order without recording an autograd graph, reading each chunk
while its state and gradient factors are in cache, and differentiates the whole by hand, chunk by
chunk in reverse: the update is linear in ``(W, S)`` and bilinear in ``(delta, a)``; the read is
linear in ``(W, S, delta)`` and bilinear in ``(x, a)``; the key gradients are a forward and a backward
pass of the memory MLP, whose adjoint needs ``gelu''``. Per chunk this is a few cache-sized matmuls
instead of hundreds of small autograd nodes and sequence-sized temporaries. ``soup`` reads mix cached
states into every layer, so for it the scan returns the start states and factors and the read is
done outside (by autograd).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mcrnn.ops.deep import network
from mcrnn.ops.deep.batched import accumulate, accumulate_matmul, unbind_chunks
from mcrnn.ops.deep.read import ChunkCoefficients, online_read, read_backward


@dataclass
class ChunkEnd:
    """End-state coefficients of every chunk: ``[n, B, H]`` scalars and ``[n, B, H, c]`` token weights."""

    retain: torch.Tensor  # A
    mix: torch.Tensor  # m_i = M_{end,i} eta_i
    carry: torch.Tensor | None = None  # P (titans)
    momentum_retain: torch.Tensor | None = None  # B
    momentum_mix: torch.Tensor | None = None  # m_S,i = (B_end / B_i) eta_i

    def tensors(self) -> list[torch.Tensor]:
        """The non-``None`` fields in declaration order (the order :class:`ChunkScan` takes them in)."""
        fields = (self.retain, self.mix, self.carry, self.momentum_retain, self.momentum_mix)
        return [x for x in fields if x is not None]

    def per_chunk(self) -> list[dict[str, torch.Tensor]]:
        """Views per chunk, shaped to broadcast: scalars ``[..., 1, 1]`` (against ``[..., d_out, d_in]``
        states), token weights ``[..., c, 1]`` (against ``[..., c, d]`` rows)."""
        views = {
            name: (x[..., None, None] if name in _SCALARS else x[..., None]).unbind(0)
            for name, x in vars(self).items()
            if x is not None
        }
        return [dict(zip(views, chunk, strict=True)) for chunk in zip(*views.values(), strict=True)]


_SCALARS = ("retain", "carry", "momentum_retain")


@dataclass
class ScanResult:
    """Per layer. ``output``: the online read ``[n, B, H, c, Dv]`` (``None`` unless asked for);
    ``weights``/``momentum``, ``inputs`` (``inputs[0]`` are the keys) and ``deltas``: start states
    ``[n, B, H, d_out, d_in]`` and gradient factors ``[n, B, H, c, d]`` of every chunk (``None`` when the
    read was fused); ``final_*``: the state after the last chunk; ``last_start``: the weights at the
    start of the last chunk (for a decoding cache); ``cached``: the weights after the chunk before each
    cache point, ``[R, B, H, d_out, d_in]``."""

    output: torch.Tensor | None
    weights: list[torch.Tensor] | None
    momentum: list[torch.Tensor] | None
    inputs: list[torch.Tensor] | None
    deltas: list[torch.Tensor] | None
    final_weights: list[torch.Tensor]
    final_momentum: list[torch.Tensor] | None
    last_start: list[torch.Tensor]
    cached: list[torch.Tensor]


def chunk_scan(
    memory: str,
    initial: Sequence[torch.Tensor],
    keys: torch.Tensor,
    values: torch.Tensor,
    ends: ChunkEnd,
    cache_points: Sequence[int],
    reset: bool,
    read: tuple[torch.Tensor, ChunkCoefficients] | None = None,
    keep_states: bool = False,
) -> ScanResult:
    """Run every chunk of ``keys``/``values`` ``[n, B, H, c, D]`` from ``initial`` (``[B, H, d_out, d_in]``
    per layer). ``cache_points`` (increasing chunk indices in ``[1, n)``) are the chunks that open a
    segment: the weights before each are returned in ``cached``, and with ``reset`` each restarts
    from ``initial`` with zero momentum. ``read = (query [n, B, H, c, Dk], coefficients)`` fuses the
    online read into the scan (then the per-chunk states and factors are returned only with
    ``keep_states``)."""
    points = tuple(int(p) for p in cache_points)
    if any(p <= 0 or p >= keys.shape[0] for p in points) or list(points) != sorted(set(points)):
        raise ValueError(f"cache_points must be increasing chunk indices in [1, n), got {list(points)}")
    depth, titans = len(initial), memory == "titans"
    states = read is None or keep_states
    spec = (memory, points, bool(reset), depth, read is not None, states)
    extra = [] if read is None else [read[0], *read[1].tensors()]
    # batch and heads merged, [n, B*H, ...]: every chunk's operands are plain 3-D batches
    batch, heads = keys.shape[1:3]
    merged = [w.reshape(batch * heads, *w.shape[-2:]) for w in initial]
    merged += [x.flatten(1, 2) for x in (keys, values, *ends.tensors(), *extra)]
    out = [_split_heads(x, batch, heads) for x in ChunkScan.apply(spec, *merged)]
    output = out.pop(0) if read is not None else None
    groups = [out[i : i + depth] for i in range(0, len(out), depth)]
    weights = groups.pop(0) if states else None
    momentum = groups.pop(0) if states and titans else None
    final_weights = groups.pop(0)
    final_momentum = groups.pop(0) if titans else None
    last_start, cached = groups.pop(0), groups.pop(0)
    ends_and_cached = (final_weights, final_momentum, last_start, cached)
    if not states:
        return ScanResult(output, None, None, None, None, *ends_and_cached)
    factors = [x for group in groups for x in group]
    inputs, deltas = [keys, *factors[: depth - 1]], factors[depth - 1 :]
    return ScanResult(output, weights, momentum, inputs, deltas, *ends_and_cached)


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


def _split_heads(x: torch.Tensor, batch: int, heads: int) -> torch.Tensor:
    """Undo the ``B*H`` merge: states ``[BH, d, d]`` -> ``[B, H, d, d]``, else ``[n, BH, ...]`` ->
    ``[n, B, H, ...]``."""
    return x.unflatten(0 if x.dim() == 3 else 1, (batch, heads))


def _per_chunk(tensors: Sequence[torch.Tensor], n_chunks: int) -> list[tuple[torch.Tensor, ...]]:
    """Per-chunk tuples of views of per-layer chunk-major tensors (``()`` per chunk when there are none)."""
    return list(zip(*(x.unbind(0) for x in tensors), strict=True)) if tensors else [()] * n_chunks


def _per_chunk_factors(terms: network.KeyGradients, n_chunks: int) -> list[network.KeyGradients]:
    """Per-chunk views of stacked key-gradient factors (``inputs[0]`` as stored: keys or None)."""
    fields = [
        [unbind_chunks(x, n_chunks) for x in xs]
        for xs in (terms.inputs, terms.deltas, terms.pre_activations, terms.back_products)
    ]
    return [network.KeyGradients(*[[x[j] for x in f] for f in fields]) for j in range(n_chunks)]


def _subtract_outer(state: torch.Tensor, delta: torch.Tensor, a: torch.Tensor, scale: torch.Tensor) -> None:
    """``state -= (delta * scale)^T a`` in place; the per-token ``scale`` goes on the narrower factor."""
    if delta.shape[-1] <= a.shape[-1]:
        left, right = delta * scale, a
    else:
        left, right = delta, a * scale
    state.baddbmm_(left.transpose(-1, -2), right, alpha=-1.0)


class ChunkScan(torch.autograd.Function):
    """Chunk states (and, fused, the online read), with a hand-written backward.

    Outputs, per layer where a list: [the read ``[n, ...]``], [start weights ``[n, ...]``, start momentum
    (titans)], final weights, final momentum (titans), the last chunk's start weights, cached weights
    ``[R, ...]``, [the hidden-layer inputs and the deltas]; the first bracketed group only with the
    fused read, the others only without it. Every output is consumed whole downstream, so autograd
    never zero-fills or scatters a slice of them.
    """

    @staticmethod
    def forward(ctx, spec: tuple, *tensors: torch.Tensor):  # noqa: ANN001, ANN205
        memory, points, reset, depth, fused, states = spec
        take = _Taker(list(tensors))
        titans = memory == "titans"
        initial, (keys, values), ends = take(depth), take(2), ChunkEnd(*take(5 if titans else 2))
        query, coef = None, None
        if fused:
            query, coef = take(1)[0], ChunkCoefficients(*take(3 if titans else 2))
        n_chunks = keys.shape[0]
        starts_w = [keys.new_empty(n_chunks, *w.shape) for w in initial]
        starts_s = [keys.new_empty(n_chunks, *w.shape) for w in initial] if titans else []
        final_w = [torch.empty_like(x[0]) for x in starts_w]
        final_s = [torch.empty_like(x[0]) for x in starts_s]
        cached = [keys.new_empty(len(points), *w.shape) for w in initial]
        terms = _buffers(keys, initial)
        # the read maps Dk -> Dv (they differ for a depth-1 memory)
        output = query.new_empty(*query.shape[:-1], initial[-1].shape[-2]) if fused else None
        read_pre = [torch.empty_like(x) for x in terms.pre_activations] if fused else []
        # per-chunk views, formed once
        chunk_w, chunk_s = _per_chunk(starts_w, n_chunks), _per_chunk(starts_s, n_chunks)
        factors = _per_chunk_factors(terms, n_chunks)
        ends_at = ends.per_chunk()
        if fused:
            queries, outputs = query.unbind(0), output.unbind(0)
            coefs = coef.per_chunk()
            pres = _per_chunk(read_pre, n_chunks)
        for j, (k, v, end) in enumerate(zip(keys.unbind(0), values.unbind(0), ends_at, strict=True)):
            if j == 0 or (reset and j in points):
                for start, w in zip(chunk_w[j], initial, strict=True):
                    start.copy_(w)
                for start in chunk_s[j]:
                    start.zero_()
            weights, momentum = chunk_w[j], chunk_s[j]
            at = network.key_gradients(memory, weights, k, v, out=factors[j])
            if fused:
                read = online_read(
                    queries[j], weights, momentum or None, at.inputs, at.deltas, coefs[j], pres[j]
                )
                outputs[j].copy_(read)
            after = j + 1
            if after == n_chunks:
                end_w, end_s = final_w, final_s
            elif reset and after in points:
                end_w, end_s = [c[points.index(after)] for c in cached], [None] * len(starts_s)
            else:
                end_w, end_s = chunk_w[after], chunk_s[after]
            _write_chunk_end(weights, momentum, at, end, end_w, end_s)
            if not reset and after in points:
                for c, w in zip(cached, end_w, strict=True):
                    c[points.index(after)] = w
        ctx.spec = spec
        ctx.set_materialize_grads(False)
        hidden = terms.inputs[1:]
        saved = [*initial, keys, values, *ends.tensors(), *starts_w, *starts_s, *hidden, *terms.deltas]
        saved += [*terms.pre_activations, *terms.back_products]
        ctx.save_for_backward(*saved, *([query, *coef.tensors(), *read_pre] if fused else []))
        last_start = [w[-1].clone() for w in starts_w]
        read_out = [output] if fused else []
        if not states:
            return (*read_out, *final_w, *final_s, *last_start, *cached)
        return (
            *read_out,
            *starts_w,
            *starts_s,
            *final_w,
            *final_s,
            *last_start,
            *cached,
            *hidden,
            *terms.deltas,
        )

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads: torch.Tensor | None):  # noqa: ANN001, ANN205
        """Reverse loop over chunks carrying ``dL/d(end state)``; per chunk, the adjoints of the read,
        the update and the key gradients, on tensors of one chunk (cache-sized)."""
        memory, points, reset, depth, fused, states = ctx.spec
        titans, hidden = memory == "titans", depth - 1
        take = _Taker(list(ctx.saved_tensors))
        initial, (keys, values) = take(depth), take(2)
        ends = ChunkEnd(*take(5 if titans else 2))
        starts_w, starts_s = take(depth), take(depth if titans else 0)
        terms = network.KeyGradients([keys, *take(hidden)], take(depth), take(hidden), take(hidden))
        query, coef, read_pre = None, None, []
        if fused:
            query, coef, read_pre = take(1)[0], ChunkCoefficients(*take(3 if titans else 2)), take(hidden)
        take_grad = _Taker(list(grads))
        g_output = take_grad(1)[0] if fused else None
        g_starts_w = take_grad(depth if states else 0)
        g_starts_s = take_grad(depth if states and titans else 0)
        g_final_w, g_final_s = take_grad(depth), take_grad(depth if titans else 0)
        g_last_start, g_cached = take_grad(depth), take_grad(depth)
        g_inputs, g_deltas = take_grad(hidden if states else 0), take_grad(depth if states else 0)
        n_chunks = keys.shape[0]
        g_initial = [torch.zeros_like(w) for w in initial]
        g_keys, g_values = torch.empty_like(keys), torch.empty_like(values)
        g_ends = ChunkEnd(*[torch.empty_like(x) for x in ends.tensors()])
        # per-chunk views, formed once
        chunk_w, chunk_s = _per_chunk(starts_w, n_chunks), _per_chunk(starts_s, n_chunks)
        factors = _per_chunk_factors(terms, n_chunks)
        ends_at = ends.per_chunk()
        g_rows = zip(*(x.unbind(0) for x in g_ends.tensors()), strict=True)
        g_ends_at = [vars(ChunkEnd(*row)) for row in g_rows]
        keys_at, g_keys_at, g_values_at = keys.unbind(0), g_keys.unbind(0), g_values.unbind(0)
        given = {
            name: [unbind_chunks(g, n_chunks) for g in group]
            for name, group in (("a", g_inputs), ("d", g_deltas), ("w", g_starts_w), ("s", g_starts_s))
        }
        if fused:
            g_query = torch.empty_like(query)
            g_coef = ChunkCoefficients(*[torch.empty_like(x) for x in coef.tensors()])
            coefs, g_coefs = coef.per_chunk(), g_coef.per_chunk()
            queries, g_queries = query.unbind(0), g_query.unbind(0)
            g_outputs = unbind_chunks(g_output, n_chunks)
            pres = _per_chunk(read_pre, n_chunks)
        g_w, g_s = list(g_final_w), list(g_final_s)  # dL/d(state after chunk j); None: no gradient
        for j in range(n_chunks - 1, -1, -1):
            weights, momentum, at, end, g_end = chunk_w[j], chunk_s[j], factors[j], ends_at[j], g_ends_at[j]
            at.inputs[0] = keys_at[j]
            g_a = [None] + [g[j] for g in given["a"]] if given["a"] else [None] * depth
            g_d = [g[j] for g in given["d"]] or [None] * depth
            g_start_w = [g[j] for g in given["w"]] or [None] * depth
            g_start_s = [g[j] for g in given["s"]] or [None] * len(momentum)
            if j == n_chunks - 1:
                g_start_w = [
                    g0 if g is None else accumulate(g0, g)
                    for g0, g in zip(g_start_w, g_last_start, strict=True)
                ]
            if fused and g_outputs[j] is not None:
                read = (queries[j], weights, momentum, at, coefs[j], pres[j], g_coefs[j])
                g_queries[j].copy_(read_backward(g_outputs[j], *read, g_start_w, g_start_s, g_a, g_d))
            elif fused:
                g_queries[j].zero_()
                for x in g_coefs[j].tensors():
                    x.zero_()
            _chunk_end_backward(g_w, g_s, weights, momentum, at, end, g_end, g_a, g_d, g_start_w, g_start_s)
            g_key, g_value = _key_gradients_backward(memory, weights, at, g_a, g_d, g_start_w)
            g_keys_at[j].copy_(g_key)
            g_values_at[j].copy_(g_value)
            # dL/d(start of chunk j) goes to initial (chunk 0 and resets) or the state after chunk j - 1
            if j == 0 or (reset and j in points):
                for g_init, g in zip(g_initial, g_start_w, strict=True):
                    if g is not None:
                        g_init += g
                g_w, g_s = [None] * depth, [None] * len(g_s)
            else:
                g_w, g_s = g_start_w, g_start_s
            if j in points:
                r = points.index(j)
                g_w = [gw if g is None else accumulate(gw, g[r]) for gw, g in zip(g_w, g_cached, strict=True)]
        result = [None, *g_initial, g_keys, g_values, *g_ends.tensors()]
        if fused:
            result += [g_query, *g_coef.tensors()]
        return tuple(result)


def _write_chunk_end(
    weights: Sequence[torch.Tensor],
    momentum: Sequence[torch.Tensor],
    at: network.KeyGradients,
    end: dict[str, torch.Tensor],
    end_w: Sequence[torch.Tensor],
    end_s: Sequence[torch.Tensor | None],
) -> None:
    """The state after a chunk, per layer, into ``end_w`` (and, titans, ``end_s`` where not None):
    ``W' = A W + P S - (delta * m)^T a``, ``S' = B S - (delta * m_S)^T a`` (accumulated in place)."""
    for l, w in enumerate(weights):
        torch.mul(w, end["retain"], out=end_w[l])
        if momentum:
            end_w[l].addcmul_(momentum[l], end["carry"])
        _subtract_outer(end_w[l], at.deltas[l], at.inputs[l], end["mix"])
        if momentum and end_s[l] is not None:
            torch.mul(momentum[l], end["momentum_retain"], out=end_s[l])
            _subtract_outer(end_s[l], at.deltas[l], at.inputs[l], end["momentum_mix"])


def _chunk_end_backward(
    g_w: list[torch.Tensor | None],
    g_s: list[torch.Tensor | None],
    weights: Sequence[torch.Tensor],
    momentum: Sequence[torch.Tensor],
    at: network.KeyGradients,
    end: dict[str, torch.Tensor],
    g_end: dict[str, torch.Tensor],
    g_a: list[torch.Tensor | None],
    g_d: list[torch.Tensor | None],
    g_start_w: list[torch.Tensor | None],
    g_start_s: list[torch.Tensor | None],
) -> None:
    """The adjoint of :func:`_write_chunk_end`: from ``dL/d(end state)`` (``g_w``, ``g_s``; None where nothing
    depends on it) the end coefficients' gradients into ``g_end``, and ``dL/d(start state)`` accumulated
    into ``g_start_w``/``g_start_s`` in place (and ``g_a``, ``g_d`` through :func:`_update_adjoint`)."""
    g_end["retain"].copy_(_inner(g_w, weights))
    g_end["mix"].copy_(_update_adjoint(g_w, end["mix"], at, g_a, g_d))
    for l, g in enumerate(g_w):
        if g is not None:
            g_start_w[l] = accumulate(g_start_w[l], g * end["retain"])
    if not momentum:
        return
    g_end["carry"].copy_(_inner(g_w, momentum))
    g_end["momentum_retain"].copy_(_inner(g_s, momentum))
    g_end["momentum_mix"].copy_(_update_adjoint(g_s, end["momentum_mix"], at, g_a, g_d))
    for l, (gw, gs) in enumerate(zip(g_w, g_s, strict=True)):
        if gs is not None:
            g_start_s[l] = accumulate(g_start_s[l], gs * end["momentum_retain"])
        if gw is not None:
            g_start_s[l] = accumulate(g_start_s[l], gw * end["carry"])


class _Taker:
    """Consume a flat list front to back, ``count`` items at a time."""

    def __init__(self, items: list) -> None:
        self.items, self.at = items, 0

    def __call__(self, count: int) -> list:
        part = self.items[self.at : self.at + count]
        self.at += count
        return part


def _inner(xs: Sequence[torch.Tensor | None], ys: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum_l <x_l, y_l>`` over the last two dims: per-layer ``[B, H, d, d]`` -> ``[B, H]`` (None: 0)."""
    total = torch.zeros(ys[0].shape[:-2], dtype=ys[0].dtype, device=ys[0].device)
    for x, y in zip(xs, ys, strict=True):
        if x is not None:
            total += torch.linalg.vecdot(x.flatten(-2), y.flatten(-2))
    return total


def _update_adjoint(
    g_state: Sequence[torch.Tensor | None],
    scale: torch.Tensor,
    at: network.KeyGradients,
    g_a: list[torch.Tensor | None],
    g_d: list[torch.Tensor | None],
) -> torch.Tensor:
    """Adjoint of ``X_l' = ... - (delta_l * scale)^T a_l`` given ``g_state = dL/dX_l'`` (None: 0).

    Accumulates ``dL/da_l = -(delta_l * scale) g_l`` into ``g_a`` and ``dL/ddelta_l = -scale * (a_l g_l^T)``
    into ``g_d``; returns ``dL/dscale = -sum_o delta_l (a_l g_l^T)`` ``[B, H, c]``.
    """
    g_scale = torch.zeros_like(scale[..., 0])
    for l, g in enumerate(g_state):
        if g is None:
            continue
        back = torch.bmm(at.inputs[l], g.transpose(-1, -2))  # a_l g_l^T, [BH, c, d_out]
        g_d[l] = (
            torch.mul(back, scale).neg_()
            if g_d[l] is None
            else torch.addcmul(g_d[l], scale, back, value=-1.0)
        )
        g_scale -= torch.linalg.vecdot(at.deltas[l], back)
        g_a[l] = accumulate_matmul(g_a[l], at.deltas[l] * scale, g, -1.0)
    return g_scale


def _key_gradients_backward(
    memory: str,
    weights: Sequence[torch.Tensor],
    at: network.KeyGradients,
    g_inputs: list[torch.Tensor | None],
    g_deltas: list[torch.Tensor | None],
    g_weights: list[torch.Tensor | None],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adjoint of :func:`network.key_gradients`: adds into ``g_weights``; returns ``(g_k, g_v)``.

    Reverse of the delta recursion ``delta_l = back_l * gelu'(z_l)``, ``back_l = delta_{l+1} W_{l+1}``
    (lowest layer first, so each ``g_deltas[l]`` is complete when used), then of ``dl/df``
    (``2 (f - v)`` or ``-v``), then of the forward ``z_l = a_{l-1} W_l^T``, ``a_l = gelu(z_l)``,
    ``f = z_L (+ k)``. ``None`` stands for a zero gradient.
    """
    depth = len(weights)
    g_deltas = [torch.zeros_like(d) if g is None else g for g, d in zip(g_deltas, at.deltas, strict=True)]
    g_pre = []  # gradient reaching z_l through gelu'(z_l) in the delta recursion
    for l in range(depth - 1):
        z = at.pre_activations[l]
        g_back = torch.ops.aten.gelu_backward(g_deltas[l], z)  # g_delta_l * gelu'(z_l)
        g_pre.append(g_deltas[l] * at.back_products[l] * network.gelu_curvature(z))
        g_deltas[l + 1] = accumulate_matmul(g_deltas[l + 1], g_back, weights[l + 1].transpose(-1, -2))
        g_weights[l + 1] = accumulate_matmul(g_weights[l + 1], at.deltas[l + 1].transpose(-1, -2), g_back)
    # dL/df = 2 g_delta_L for titans (the 2 goes into alpha); dla's dl/df = -v leaves the last layer unused
    g_z, scale = (None, 1.0) if memory == "dla" else (g_deltas[-1], 2.0)
    for l in range(depth - 1, -1, -1):
        if g_z is not None:
            g_weights[l] = accumulate_matmul(g_weights[l], g_z.transpose(-1, -2), at.inputs[l], scale)
            g_inputs[l] = accumulate_matmul(g_inputs[l], g_z, weights[l], scale)
        if l > 0:  # a_l = gelu(z_{l-1})
            g_z, scale = g_pre[l - 1], 1.0
            if g_inputs[l] is not None:
                g_z = torch.ops.aten.gelu_backward(g_inputs[l], at.pre_activations[l - 1]).add_(g_pre[l - 1])
    g_first = torch.zeros_like(at.inputs[0]) if g_inputs[0] is None else g_inputs[0]
    if memory == "dla":
        return g_first, -g_deltas[-1]
    g_key = g_first if depth == 1 else torch.add(g_first, g_deltas[-1], alpha=2.0)  # f = z_L + k
    return g_key, g_deltas[-1] * -2.0
