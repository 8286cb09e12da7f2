"""Checks of the tensors a Memory Caching op is called with, run once per call at the public entry.

Shapes, dtypes and devices are checked on the host; value ranges (gates, finiteness) need one
device-to-host sync for all gates together. Callers whose inputs are valid by construction (the layer)
skip both with ``check_inputs=False``.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Mapping

import torch

#: closed ranges of the per-token gates, by keyword: (low, high); every gate value must also be finite
GATE_RANGES: dict[str, tuple[float, float]] = {
    "log_decay": (-float("inf"), 0.0),
    "prev_gate": (0.0, 1.0),
    "cur_gate": (0.0, 1.0),
    "eta": (0.0, float("inf")),
    "alpha": (0.0, 1.0),
    "beta": (0.0, 1.0),
    "momentum": (0.0, 1.0),
}


def check_tensors(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor | None,
    gates: Mapping[str, torch.Tensor | None],
    channel_gates: Collection[str] = (),
) -> None:
    """Check ``q, k, u`` [B, T, H, Dk], ``v`` [B, T, H, Dv] and the gates [B, T, H] (the ones named in
    ``channel_gates``: [B, T, H, Dk], a value per key channel).

    Raises ``TypeError`` for non-tensors and non-floating dtypes and ``ValueError`` for wrong ranks,
    empty dimensions, mismatched B/T/H/Dk, mixed dtypes of ``q, k, v, u`` or devices, and gates
    outside :data:`GATE_RANGES` or not finite, naming the offending argument.
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
    if 0 in q.shape or v.shape[-1] == 0:
        raise ValueError(f"q and v need B, T, H, D >= 1, got q {tuple(q.shape)} and v {tuple(v.shape)}")
    batch, seq_len, heads, key_dim = q.shape
    for name in ("k", "u"):
        tensor = named[name]
        if tensor is not None and tuple(tensor.shape) != (batch, seq_len, heads, key_dim):
            raise ValueError(
                f"{name} must have the shape of q [B,T,H,Dk]={tuple(q.shape)}, got {tuple(tensor.shape)}"
            )
    if tuple(v.shape[:3]) != (batch, seq_len, heads):
        raise ValueError(f"v must be [B,T,H,Dv] with B,T,H={batch, seq_len, heads}, got {tuple(v.shape)}")
    dtypes = {name: named[name].dtype for name in ("q", "k", "v", "u") if named[name] is not None}
    if len(set(dtypes.values())) > 1:
        raise TypeError(f"q, k, v and u must share one dtype, got {dtypes}")
    for name, tensor in gates.items():
        expected = (batch, seq_len, heads, key_dim) if name in channel_gates else (batch, seq_len, heads)
        if tensor is not None and tuple(tensor.shape) != expected:
            layout = "[B,T,H,Dk]" if name in channel_gates else "[B,T,H]"
            raise ValueError(f"{name} must be {layout}={expected}, got {tuple(tensor.shape)}")
    devices = {t.device for t in named.values() if t is not None}
    if len(devices) > 1:
        raise ValueError(f"all inputs must be on one device, got {sorted(map(str, devices))}")
    _check_gate_ranges({name: g for name, g in gates.items() if g is not None})


def _check_gate_ranges(gates: Mapping[str, torch.Tensor]) -> None:
    """One host sync for all gates: every value finite (log_decay) and inside its range."""
    if not gates:
        return
    bad = torch.stack([_outside(name, g) for name, g in gates.items()]).tolist()
    for (name, gate), is_bad in zip(gates.items(), bad, strict=True):
        if is_bad:
            low, high = GATE_RANGES[name]
            wanted = (
                f">= {low:g}"
                if high == float("inf")
                else f"<= {high:g}"
                if low == -float("inf")
                else (f"in [{low:g}, {high:g}]")
            )
            finite = gate[gate.isfinite()]
            seen = (
                f"[{finite.min().item():.3g}, {finite.max().item():.3g}]"
                if finite.numel()
                else "no finite value"
            )
            nonfinite = gate.numel() - finite.numel()
            raise ValueError(
                f"{name} must be finite and {wanted}; got {nonfinite} non-finite values, finite range {seen}"
            )


def _outside(name: str, gate: torch.Tensor) -> torch.Tensor:
    low, high = GATE_RANGES[name]
    return ~(gate.isfinite() & (gate >= low) & (gate <= high)).all()


def all_finite(*tensors: torch.Tensor | None) -> bool:
    """Whether every entry of the tensors is finite, from one sum per tensor and one host sync.

    Conservative: a sum of finite entries that overflows (float32) also answers False, which only
    sends the caller down its exact path for non-finite values. Inside ``torch.compile`` it answers True
    without looking (no host sync, no graph break): compiled code takes the fast paths, which keep
    a non-finite input's NaN causal only to the chunk (it may reach earlier tokens of its chunk).
    """
    if torch.compiler.is_compiling():
        return True
    sums = [x.detach().sum().float() for x in tensors if x is not None]
    return bool(torch.stack(sums).isfinite().all()) if sums else True


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """State accumulation dtype: float64 if any input is float64, else float32 (bf16/fp16 upcast)."""
    wide = any(t is not None and t.dtype == torch.float64 for t in tensors)
    return torch.float64 if wide else torch.float32


def full_precision(device: torch.device) -> torch.autocast:
    """A context without autocast: the PyTorch paths accumulate in the dtype :func:`to_compute_dtype`
    chose, which an enclosing ``torch.autocast`` must not lower inside them."""
    return torch.autocast(device.type, enabled=False)


def to_compute_dtype(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor | None,
    gates: Mapping[str, torch.Tensor | None],
    *others: torch.Tensor | None,
) -> tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor | None], torch.dtype]:
    """``(q, k, v, u)`` (``u = q`` when None) and ``gates`` in the accumulation dtype of
    :func:`compute_dtype` over them and ``others``, and that dtype."""
    dtype = compute_dtype(q, k, v, u, *gates.values(), *others)
    q, k, v = (x.to(dtype) for x in (q, k, v))
    u = q if u is None else u.to(dtype)
    return (q, k, v, u), {name: None if g is None else g.to(dtype) for name, g in gates.items()}, dtype


def available_memory(device: torch.device) -> int | None:
    """Free bytes on ``device``: CUDA's free memory, or ``MemAvailable`` of /proc/meminfo on the CPU
    (None where neither can be read)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_working_set(num_segments: int, q: torch.Tensor, v: torch.Tensor) -> None:
    """Fail early, with the estimate, when a parallel matrix-memory call cannot fit in memory.

    The parallel path materialises ``N`` cached states [B, N, H, Dk, Dv] and router weights
    [B, T, H, N] in the accumulation dtype, at least ``states + weights`` bytes (grm at T=16384 with
    one-token segments: 5.0 GiB of the 6.9 GiB it was measured to take). Above the free memory of the
    device this raises ``MemoryError``; above half of it, warns.
    """
    batch, seq_len, heads, key_dim = q.shape
    width = 8 if compute_dtype(q, v) == torch.float64 else 4
    states = batch * num_segments * heads * key_dim * v.shape[-1] * width
    weights = batch * seq_len * heads * num_segments * width
    estimate = states + weights
    if estimate < 1 << 28:
        return
    free = available_memory(q.device)
    if free is None or estimate < free // 2:
        return
    message = (
        f"memory_caching needs at least {estimate / 2**30:.1f} GiB here ({num_segments} cached states of "
        f"[H, Dk, Dv]=[{heads}, {key_dim}, {v.shape[-1]}] and [B, T, H, N] router weights for T={seq_len}), "
        f"and {free / 2**30:.1f} GiB are free on {q.device}: use a larger segment_size, aggregation='ssc', "
        "segmentation='log' or shorter sequences"
    )
    if estimate > free:
        raise MemoryError(message)
    warnings.warn(message, ResourceWarning, stacklevel=3)
