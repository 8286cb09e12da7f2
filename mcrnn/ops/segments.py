"""Segmentation, argument checks and router helpers shared by every memory family.

Notation (DESIGN.md §2-§5): a sequence of ``T`` tokens is split into segments ``S(1..N)``; token ``t``
lies in segment ``s(t)``. The router key of a finished segment is ``c_i = pool_{j in S(i)} k_j``; the
online context ``c_s(t)`` pools the keys of segment ``s`` up to and including ``t``. ``pool`` is a
mean (default) or a sum (the paper's SSC section).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

AGGREGATIONS = ("residual", "grm", "soup", "ssc", "average")
INITS = ("checkpoint", "independent")
POOLINGS = ("mean", "sum")
SEGMENTATIONS = ("constant", "log")


def check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    """Raise ``ValueError`` naming ``name`` when ``value`` is not one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")


def check_options(aggregation: str, init: str, pooling: str, top_k: int | None) -> None:
    """Validate the MC options every family shares (aggregation, init, pooling, top_k)."""
    check_choice("aggregation", aggregation, AGGREGATIONS)
    check_choice("init", init, INITS)
    check_choice("pooling", pooling, POOLINGS)
    if aggregation == "ssc":
        if top_k is None:
            raise ValueError("aggregation='ssc' needs top_k (an int >= 1), got None")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be an int >= 1, got {top_k!r}")


def resolve_segment_lengths(
    seq_len: int,
    segment_size: int | None,
    segment_lengths: Sequence[int] | None,
) -> list[int]:
    """Return the list of segment lengths covering ``seq_len`` tokens.

    Exactly one of ``segment_size`` (constant segments of that many tokens, the last one may be
    shorter; a size >= T gives one segment) and ``segment_lengths`` (explicit lengths summing to T)
    may be given; with neither, the whole sequence is one segment (the base memory).
    """
    if segment_size is not None and segment_lengths is not None:
        raise ValueError("give segment_size or segment_lengths, not both")
    if segment_lengths is not None:
        lengths = [int(n) for n in segment_lengths]
        if any(isinstance(n, bool) or int(n) != n or n < 1 for n in segment_lengths):
            raise ValueError(f"segment_lengths must be positive ints, got {list(segment_lengths)}")
        if sum(lengths) != seq_len:
            raise ValueError(f"segment_lengths must sum to T={seq_len}, got sum {sum(lengths)}")
        return lengths
    if segment_size is None:
        return [seq_len] if seq_len > 0 else []
    if isinstance(segment_size, bool) or not isinstance(segment_size, int) or segment_size < 1:
        raise ValueError(f"segment_size must be an int >= 1, got {segment_size!r}")
    full, rest = divmod(seq_len, segment_size)
    return [segment_size] * full + ([rest] if rest else [])


def fenwick_buckets(length: int) -> list[tuple[int, int]]:
    """``[start, end)`` buckets of a prefix of ``length`` tokens, largest first (37 -> 32, 4, 1)."""
    buckets, start = [], 0
    for level in reversed(range(length.bit_length())):
        if length >> level & 1:
            buckets.append((start, start + (1 << level)))
            start += 1 << level
    return buckets


def segment_index(lengths: Sequence[int], device: torch.device | None = None) -> torch.Tensor:
    """``s(t)`` for every token: LongTensor [T] with the 0-based segment of each token."""
    counts = torch.tensor(list(lengths), dtype=torch.long, device=device)
    return torch.repeat_interleave(torch.arange(len(lengths), device=device), counts)


def check_qkv(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor | None,
    gates: dict[str, torch.Tensor | None],
) -> None:
    """Check ranks, shapes and dtypes of ``q, k, u`` [B,T,H,Dk], ``v`` [B,T,H,Dv], gates [B,T,H].

    Raises ``TypeError`` for non-tensors and non-floating dtypes and ``ValueError`` for wrong
    ranks or mismatched B/T/H/Dk, naming the offending argument.
    """
    named = {"q": q, "k": k, "v": v, "u": u, **gates}
    for name, tensor in named.items():
        if tensor is None:
            continue
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if not tensor.is_floating_point():
            raise TypeError(f"{name} must have a floating dtype, got {tensor.dtype}")
    for name in ("q", "k", "v", "u"):
        tensor = named[name]
        if tensor is not None and tensor.dim() != 4:
            raise ValueError(f"{name} must be [B, T, H, D] (4-D), got shape {tuple(tensor.shape)}")
    batch, seq_len, heads, key_dim = q.shape
    for name in ("k", "u"):
        tensor = named[name]
        if tensor is not None and tuple(tensor.shape) != (batch, seq_len, heads, key_dim):
            raise ValueError(
                f"{name} must have the shape of q [B,T,H,Dk]={tuple(q.shape)}, got {tuple(tensor.shape)}"
            )
    if tuple(v.shape[:3]) != (batch, seq_len, heads):
        raise ValueError(f"v must be [B,T,H,Dv] with B,T,H={batch, seq_len, heads}, got {tuple(v.shape)}")
    for name, tensor in gates.items():
        if tensor is not None and tuple(tensor.shape) != (batch, seq_len, heads):
            raise ValueError(f"{name} must be [B,T,H]={batch, seq_len, heads}, got {tuple(tensor.shape)}")
    devices = {t.device for t in named.values() if t is not None}
    if len(devices) > 1:
        raise ValueError(f"all inputs must be on one device, got {sorted(map(str, devices))}")


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """State accumulation dtype: float64 if any input is float64, else float32 (bf16/fp16 upcast)."""
    wide = any(t is not None and t.dtype == torch.float64 for t in tensors)
    return torch.float64 if wide else torch.float32


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
