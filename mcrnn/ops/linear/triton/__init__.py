"""Triton kernels for Memory Caching over matrix memories (GPU; CPU only through the interpreter).

The PyTorch op in :mod:`mcrnn.ops.linear.chunk` splits MC into three pieces; each has a kernel
here with the same semantics (see docs/triton.md):

- :func:`chunk_linear` ``(q, k, v, log_decay, lengths, init) -> (online, states)``: the chunked
  decayed linear attention, online reads [B,T,H,Dv] and segment-end states [B,N,H,Dk,Dv];
- :func:`cached_read` ``(q, gates, states, lengths) -> y``: ``y_t = sum_{i<s(t)} g_{t,i} q_t^T M(i)``;
- :func:`ssc_read` ``(q, indices, weights, states, lengths) -> y``: the same read restricted to the
  top-k selected states of every token;
- :func:`grm_read` ``(q, u, contexts, online, online_logit, states, lengths) -> y``: the whole ``grm``
  output with the router softmax fused into the read (no [B,T,H,N] gates tensor).

The kernel modules are imported on first use, so that the ``TRITON_INTERPRET`` switch in force
then (not at package import) decides whether they compile for the GPU or run interpreted.
:func:`use_triton` is the dispatcher's test: CUDA tensors (or CPU tensors with
``TRITON_INTERPRET=1``), fp16/bf16/fp32, head dims powers of two in 16..256; anything else falls
back to PyTorch, with a one-time warning when the inputs are on a GPU.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Sequence

import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 256
_warned: set[str] = set()


def triton_available() -> bool:
    """True when the optional ``triton`` package can be imported."""
    return importlib.util.find_spec("triton") is not None


def device_reason(device: torch.device) -> str | None:
    """Why the Triton kernels cannot run on ``device`` (``None``: CUDA, or the CPU with the interpreter)."""
    if device.type != "cuda" and not (device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"):
        return f"device {device} (Triton needs CUDA, or TRITON_INTERPRET=1 on the CPU)"
    return None


def unsupported_reason(*tensors: torch.Tensor | None, head_dims: Sequence[int]) -> str | None:
    """Why the Triton kernels cannot run on ``tensors`` (``None`` when they can).

    Raises ``ValueError`` when the tensors are on several devices: that is a caller error, not a
    reason to fall back.
    """
    present = [t for t in tensors if t is not None]
    if len({t.device for t in present}) > 1:
        raise ValueError(f"all inputs must be on one device, got {sorted({str(t.device) for t in present})}")
    if not triton_available():
        return "triton is not installed"
    reason = device_reason(present[0].device)
    if reason is not None:
        return reason
    dtypes = {t.dtype for t in present if t.is_floating_point()}
    if not dtypes <= set(SUPPORTED_DTYPES):
        return f"dtypes {sorted(map(str, dtypes))} (supported: fp16, bf16, fp32)"
    for dim in head_dims:
        if not (MIN_HEAD_DIM <= dim <= MAX_HEAD_DIM and dim & (dim - 1) == 0):
            return f"head dim {dim} (supported: powers of two in {MIN_HEAD_DIM}..{MAX_HEAD_DIM})"
    return None


def use_triton(*tensors: torch.Tensor | None, head_dims: Sequence[int], requested: bool = False) -> bool:
    """Whether to run the Triton kernels on ``tensors``; warns once per reason for GPU inputs, or for
    any inputs when the caller ``requested`` Triton explicitly (``backend="triton"``).

    CPU inputs without the interpreter are the normal PyTorch path and never warn unless requested.
    """
    reason = unsupported_reason(*tensors, head_dims=head_dims)
    if reason is None:
        return True
    on_gpu = any(t is not None and t.device.type == "cuda" for t in tensors)
    if (on_gpu or requested) and reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"mcrnn: Triton kernels unsupported for {reason}; using PyTorch", stacklevel=3)
    return False


def chunk_linear(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor | None,
    lengths: Sequence[int],
    init: str = "checkpoint",
) -> tuple[torch.Tensor, torch.Tensor]:
    """See :func:`mcrnn.ops.linear.triton.chunk.chunk_linear`."""
    from mcrnn.ops.linear.triton.chunk import chunk_linear as impl
    from mcrnn.ops.linear.triton.utils import check_device

    check_device(q=q, k=k, v=v, log_decay=log_decay)
    return impl(q, k, v, log_decay, lengths, init)


def cached_read(
    q: torch.Tensor, gates: torch.Tensor, states: torch.Tensor, lengths: Sequence[int]
) -> torch.Tensor:
    """See :func:`mcrnn.ops.linear.triton.cached.cached_read`."""
    from mcrnn.ops.linear.triton.cached import cached_read as impl
    from mcrnn.ops.linear.triton.utils import check_device

    check_device(q=q, gates=gates, states=states)
    return impl(q, gates, states, lengths)


def ssc_read(
    q: torch.Tensor,
    indices: torch.Tensor,
    weights: torch.Tensor,
    states: torch.Tensor,
    lengths: Sequence[int],
) -> torch.Tensor:
    """See :func:`mcrnn.ops.linear.triton.cached.ssc_read`."""
    from mcrnn.ops.linear.triton.cached import ssc_read as impl
    from mcrnn.ops.linear.triton.utils import check_device

    check_device(q=q, indices=indices, weights=weights, states=states)
    return impl(q, indices, weights, states, lengths)


def grm_read(
    q: torch.Tensor,
    u: torch.Tensor,
    contexts: torch.Tensor,
    online: torch.Tensor,
    online_logit: torch.Tensor,
    states: torch.Tensor,
    lengths: Sequence[int],
) -> torch.Tensor:
    """See :func:`mcrnn.ops.linear.triton.grm.grm_read`."""
    from mcrnn.ops.linear.triton.grm import grm_read as impl
    from mcrnn.ops.linear.triton.utils import check_device

    check_device(q=q, u=u, contexts=contexts, online=online, online_logit=online_logit, states=states)
    return impl(q, u, contexts, online, online_logit, states, lengths)


__all__ = [
    "cached_read",
    "chunk_linear",
    "grm_read",
    "ssc_read",
    "triton_available",
    "unsupported_reason",
    "use_triton",
]
