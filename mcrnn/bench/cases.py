"""Benchmark cases: each builds the inputs once and returns a step that runs forward + backward.

A case is a JSON-able dict ``{"kind": ..., "seq_len": ..., ...}``:

- ``op``: :func:`mcrnn.ops.memory_caching` on random [B, T, H, D] tensors (``options`` passed through)
  and the per-token gates named in ``gates`` (``log_decay``, ``beta``; random, in the layer's ranges);
- ``sdpa``: causal ``scaled_dot_product_attention`` with the same B, H, D;
- ``layer``: :class:`mcrnn.layers.MemoryCachingAttention` (``options`` passed through);
- ``peer``: the public ``memory-caching`` 0.1.0 package's ``MemoryCachingLayer`` (per-token loop);
- ``titans_pytorch``: ``titans-pytorch``'s ``NeuralMemory`` (see :mod:`mcrnn.bench.deep`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F


def build(case: dict[str, Any]) -> tuple[Callable[[], None], int]:
    """Return ``(step, tokens)`` for one case; ``step()`` runs forward and backward once."""
    from mcrnn.bench.deep import build_titans_pytorch

    builders = {
        "op": _op,
        "sdpa": _sdpa,
        "layer": _layer,
        "peer": _peer,
        "titans_pytorch": build_titans_pytorch,
    }
    if case["kind"] not in builders:
        raise ValueError(f"unknown case kind {case['kind']!r}; expected one of {sorted(builders)}")
    return builders[case["kind"]](case)


def _device_dtype(case: dict[str, Any]) -> tuple[torch.device, torch.dtype]:
    return torch.device(case.get("device", "cpu")), getattr(torch, case.get("dtype", "float32"))


def _qkv(case: dict[str, Any]) -> list[torch.Tensor]:
    device, dtype = _device_dtype(case)
    shape = (case["batch"], case["seq_len"], case["heads"], case["head_dim"])
    gen = torch.Generator(device=device).manual_seed(0)
    tensors = [torch.randn(shape, generator=gen, device=device, dtype=dtype) for _ in range(3)]
    # normalised keys/queries, as the layer feeds the op
    tensors[0] = F.normalize(tensors[0], dim=-1)
    tensors[1] = F.normalize(tensors[1], dim=-1)
    return [t.requires_grad_() for t in tensors]


def _op(case: dict[str, Any]):
    from mcrnn.ops import memory_caching
    from mcrnn.ops.memories import memory_inputs

    q, k, v = _qkv(case)
    options = dict(case.get("options", {}))
    family, gates = options.pop("memory", "linear"), _gates(case)

    def step() -> None:
        memory_caching(q, k, v, memory=memory_inputs(family, **gates), **options).sum().backward()

    return step, case["batch"] * case["seq_len"]


def _gates(case: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The gates [B, T, H] named in ``case["gates"]`` as the layer makes them from random activations
    ``z``: ``log_decay = logsigmoid(z) / 16`` ([B, T, H, D], one per key channel, for the memories
    ``gla``/``kda``), ``beta = sigmoid(z)``; they require grad."""
    from mcrnn.layers.deep_memory import GATE_NORMALIZER
    from mcrnn.ops.spec import CHANNEL_DECAY_MEMORIES

    device, dtype = _device_dtype(case)
    gen = torch.Generator(device=device).manual_seed(1)
    makers = {"log_decay": lambda z: F.logsigmoid(z) / GATE_NORMALIZER, "beta": torch.sigmoid}
    shape = (case["batch"], case["seq_len"], case["heads"])
    gates = {}
    for name in case.get("gates", ()):
        if name not in makers:
            raise ValueError(f"unknown gate {name!r} in a bench case; expected one of {sorted(makers)}")
        per_channel = name == "log_decay" and case.get("options", {}).get("memory") in CHANNEL_DECAY_MEMORIES
        size = (*shape, case["head_dim"]) if per_channel else shape
        z = torch.randn(size, generator=gen, device=device, dtype=torch.float32)
        gates[name] = makers[name](z).to(dtype).requires_grad_()
    return gates


def _sdpa(case: dict[str, Any]):
    q, k, v = (t.detach().transpose(1, 2).contiguous().requires_grad_() for t in _qkv(case))

    def step() -> None:
        F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()

    return step, case["batch"] * case["seq_len"]


def _hidden(case: dict[str, Any]) -> torch.Tensor:
    device, dtype = _device_dtype(case)
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (case["batch"], case["seq_len"], case["hidden_size"])
    return torch.randn(shape, generator=gen, device=device, dtype=dtype).requires_grad_()


def _layer(case: dict[str, Any]):
    from mcrnn.layers import MemoryCachingAttention

    device, dtype = _device_dtype(case)
    torch.manual_seed(0)
    layer = MemoryCachingAttention(case["hidden_size"], case["heads"], **case.get("options", {}))
    layer = layer.to(device=device, dtype=dtype)
    x = _hidden(case)

    def step() -> None:
        layer(x)[0].sum().backward()

    return step, case["batch"] * case["seq_len"]


def _peer(case: dict[str, Any]):
    import memory_caching as peer  # the optional `bench` extra

    options = dict(case.get("options", {}))
    torch.manual_seed(0)
    config = peer.MCConfig(d_model=case["hidden_size"], num_heads=case["heads"], backend="linear", **options)
    layer = peer.MemoryCachingLayer(config=config, backend=peer.LinearMemoryBackend())
    x = _hidden(case)

    def step() -> None:
        layer(x).sum().backward()

    return step, case["batch"] * case["seq_len"]
