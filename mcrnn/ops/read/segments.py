"""Segment indices, router contexts and aggregation weights shared by every memory family.

Notation (DESIGN.md §2-§5): a sequence of ``T`` tokens is split into segments ``S(1..N)``; token ``t``
lies in segment ``s(t)``. The router key of a finished segment is ``c_i = pool_{j in S(i)} k_j``; the
online context ``c_s(t)`` pools the keys of segment ``s`` up to and including ``t``. ``pool`` is a
mean (default) or a sum (the paper's SSC section).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def segment_index(lengths: Sequence[int], device: torch.device | None = None) -> torch.Tensor:
    """``s(t)`` for every token: LongTensor [T] with the 0-based segment of each token."""
    counts = torch.tensor(list(lengths), dtype=torch.long, device=device)
    segments = torch.arange(len(lengths), device=device)
    return torch.repeat_interleave(segments, counts, output_size=sum(lengths))  # static size: compiles


def segment_contexts(
    k: torch.Tensor, lengths: Sequence[int], pooling: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Router keys of finished segments and the causal online context.

    Args:
        k: [B, T, H, Dk] keys.
        lengths: segment lengths summing to T.
        pooling: ``"mean"`` or ``"sum"``.

    Returns:
        ``contexts`` [B, N, H, Dk] with ``c_i = pool_{j in S(i)} k_j`` for every segment (the last
        one included; callers use only ``i < s(t)``), and ``online`` [B, T, H, Dk] with
        ``c_s(t) = pool_{j in S(s), j <= t} k_j``.
    """
    seg = segment_index(lengths, k.device)
    batch, seq_len, heads, key_dim = k.shape
    n_seg = len(lengths)
    sums = k.new_zeros(batch, n_seg, heads, key_dim).index_add(1, seg, k)
    prefix = torch.cumsum(k, dim=1)
    seg_start = torch.tensor([0, *lengths[:-1]], device=k.device).cumsum(0)
    # prefix sum up to the token before each segment's start, gathered per token
    before = torch.cat([k.new_zeros(batch, 1, heads, key_dim), prefix], dim=1)[:, seg_start[seg]]
    online = prefix - before
    if pooling == "mean":
        counts = torch.tensor(list(lengths), device=k.device, dtype=k.dtype)
        sums = sums / counts.view(1, -1, 1, 1)
        position = torch.arange(seq_len, device=k.device) - seg_start[seg] + 1
        online = online / position.to(k.dtype).view(1, -1, 1, 1)
    return sums, online


def router_gates(
    u: torch.Tensor,
    contexts: torch.Tensor,
    online_context: torch.Tensor,
    seg: torch.Tensor,
    aggregation: str,
    top_k: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Weights of the cached memories and of the online memory for every token.

    ``logits_{t,i} = <u_t, c_i>`` for cached ``i < s(t)`` and ``<u_t, c_s(t)>`` for the online one.

    - ``residual``: every weight is 1.
    - ``grm``/``soup``: ``g_t = softmax`` over the cached and online logits.
    - ``ssc``: the softmax runs over the ``top_k`` largest cached logits plus the online one; the
      other cached weights are exactly 0.
    - ``average``: every read memory weighs ``1/s(t)``.

    Args:
        u: [B, T, H, Dk] router queries; contexts: [B, N, H, Dk]; online_context: [B, T, H, Dk];
        seg: [T] segment index of each token.

    Returns:
        ``cached`` [B, T, H, N] (zero where ``i >= s(t)`` or not selected), ``online`` [B, T, H], and
        for ``ssc`` the selected segment indices [B, T, H, min(top_k, N)] (slots pointing at
        ``i >= s(t)`` carry weight 0), else None.
    """
    n_seg = contexts.shape[1]
    visible = torch.arange(n_seg, device=u.device).view(1, -1) < seg.view(-1, 1)  # [T, N]
    visible = visible.view(1, seg.numel(), 1, n_seg).expand(u.shape[0], -1, u.shape[2], -1)

    def logits() -> tuple[torch.Tensor, torch.Tensor]:
        return torch.einsum("bthd,bnhd->bthn", u, contexts), (u * online_context).sum(-1)

    return mixing_weights(visible, logits, aggregation, top_k, u.dtype)


def mixing_weights(
    visible: torch.Tensor,
    logits: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    aggregation: str,
    top_k: int | None,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Aggregation weights (DESIGN.md §3) from which cached memories each token may read.

    Args:
        visible: [B, T, H, N] bool, True where token t may read cached memory i.
        logits: returns the router logits ``(cached [B, T, H, N], online [B, T, H])``; called only
            by the aggregations that route (``grm``, ``soup``, ``ssc``).
        dtype: dtype of the fixed weights of ``residual`` and ``average``.

    Returns: ``(cached [B, T, H, N], online [B, T, H], selected [B, T, H, k] or None)`` as
    :func:`router_gates` describes.
    """
    if aggregation == "residual":
        return visible.to(dtype), visible.new_ones(visible.shape[:3], dtype=dtype), None
    if aggregation == "average":
        weight = 1.0 / (1 + visible.sum(-1)).to(dtype)
        return visible.to(dtype) * weight.unsqueeze(-1), weight, None
    cached_logits, online_logits = logits()
    mask = visible
    selected = None
    if aggregation == "ssc":
        ranked = cached_logits.masked_fill(~visible, float("-inf")).nan_to_num(nan=float("-inf"))
        # ties among hidden (-inf) slots are harmless: they are masked out below
        selected = ranked.topk(min(top_k, visible.shape[-1]), dim=-1).indices
        mask = visible & torch.zeros_like(visible).scatter(-1, selected, True)
    full = torch.cat([cached_logits.masked_fill(~mask, float("-inf")), online_logits.unsqueeze(-1)], -1)
    gates = torch.softmax(full, dim=-1)
    return gates[..., :-1], gates[..., -1], selected
