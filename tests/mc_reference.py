"""Float64 references of the MC token mixer and of one model block, written from their parameters.

Independent of the forward code in :mod:`mcrnn.layers` and :mod:`mcrnn.models`: every step of the
documented computation (layer docstring, DESIGN.md §9) is spelled out here from the modules' weights,
so a change to a forward (a missing normalisation, another gate function, a mixed-up residual) shows
against it. The memory itself is the op's token-loop definition (``backend="naive"``), which
``tests/ops`` checks on its own. Imported by test modules (``tests/`` is on ``sys.path`` under pytest's
default import mode, as the directory of the root ``conftest.py``).

    q, k, v, u = x W_{q,k,v,u}
    q, k, v    = silu(causal_conv(q, k, v))                 kernel K, depthwise, zeros before t = 0
    q, k       = q / |q|, k / |k|                           per head
    linear/swla/gated_deltanet: log a_t = logsigmoid(x W_a + b_a) / 16
    swla: (b_t, l_t) = sigmoid(x W_s + b_s);   deltanet/gated_deltanet/kda: b_t = sigmoid(x W_b + b_b)
    gla: log a_t = logsigmoid(x W_f + b_f) / 16,   kda: log a_t = -exp(A_log) softplus(x W_f + dt_bias)
                 (both [B, T, H, Dk]: a decay per key channel)
    dla/titans:  eta = 0.01 sigmoid(r_0), alpha = sigmoid(r_1)^(1/16), momentum = sigmoid(r_2),
                 r = x W_r + b_r;   v = v / |v|
    o = memory_caching(q, k, v, u, ..., backend="naive")
    y = W_o [RMSNorm(o) * silu(x W_g)]                      RMSNorm per head, with its weight

    block(h) = h' + SwiGLU(RMSNorm(h')),   h' = h + mixer(RMSNorm(h)),
    SwiGLU(z) = W_down (silu(W_gate z) * W_up z)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mcrnn.ops import memory_caching
from mcrnn.ops.memories import memory_inputs

#: the layer's documented gate normaliser (GLA's 1/16) and the deep memories' step-size bound
GATE_POWER = 1.0 / 16.0
LR_MAX = 0.01


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last dimension."""
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def linear(x: torch.Tensor, module: nn.Linear) -> torch.Tensor:
    """``x W^T + b`` from a module's parameters."""
    out = x @ module.weight.T
    return out if module.bias is None else out + module.bias


def causal_conv_silu(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """``silu`` of the depthwise causal convolution of ``x`` [B, T, C] with ``conv``'s weight [C, 1, K]
    (``torch.nn.Conv1d`` semantics: the last tap multiplies the current token), K - 1 zeros on the left."""
    kernel = conv.weight.shape[-1]
    padded = F.pad(x.transpose(1, 2), (kernel - 1, 0))
    return F.silu(F.conv1d(padded, conv.weight, conv.bias, groups=x.shape[-1])).transpose(1, 2)


def unit(x: torch.Tensor) -> torch.Tensor:
    """``x / |x|`` over the last dimension."""
    return x / x.norm(dim=-1, keepdim=True)


def reference_layer(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``MemoryCachingAttention``'s output for ``x`` [B, T, hidden] (no mask, no cache)."""
    batch, seq_len, _ = x.shape
    heads = (batch, seq_len, layer.num_heads, layer.head_dim)
    streams = {}
    for name in "qkv":
        stream = linear(x, getattr(layer, f"{name}_proj"))
        if name in layer.convs:
            stream = causal_conv_silu(stream, layer.convs[name].conv)
        streams[name] = stream.reshape(heads)
    q, k, v = unit(streams["q"]), unit(streams["k"]), streams["v"]
    u = None if layer.u_proj is None else linear(x, layer.u_proj).reshape(heads)
    gates = {}
    if layer.deep is not None:
        rates = linear(x, layer.deep.rate_proj).unflatten(-1, (-1, layer.num_heads))  # [B, T, n, H]
        gates = {
            "params": list(layer.deep.weights),
            "eta": LR_MAX * torch.sigmoid(rates[..., 0, :]),
            "alpha": torch.sigmoid(rates[..., 1, :]) ** GATE_POWER,
            "momentum": torch.sigmoid(rates[..., 2, :]) if layer.memory == "titans" else None,
        }
        v = unit(v)
    else:
        if layer.decay_proj is not None:
            gates["log_decay"] = F.logsigmoid(linear(x, layer.decay_proj)) * GATE_POWER
        if layer.channel_decay is not None:
            gates["log_decay"] = channel_log_decay(layer, x)
        if layer.swla_proj is not None:
            swla = torch.sigmoid(linear(x, layer.swla_proj))
            gates["prev_gate"] = swla[..., : layer.num_heads]
            gates["cur_gate"] = swla[..., layer.num_heads :]
        if layer.beta_proj is not None:
            gates["beta"] = torch.sigmoid(linear(x, layer.beta_proj))
    memory = memory_inputs(layer.memory, **gates)
    options = {"spec": layer.spec, "chunk_size": layer.chunk_size, "backend": "naive"}
    out = memory_caching(q, k, v, u, memory=memory, **options)
    gate = F.silu(linear(x, layer.gate_proj).reshape(heads))
    normed = rms_norm(out, layer.out_norm.weight, layer.out_norm.eps) * gate
    return linear(normed.reshape(batch, seq_len, -1), layer.o_proj)


def reference_block(block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """One ``MCBlock`` (an MC mixer) on ``hidden`` [B, T, width]: norm -> mixer -> norm -> MLP, residuals."""
    mixed = reference_layer(block.mixer, rms_norm(hidden, block.mixer_norm.weight, block.mixer_norm.eps))
    hidden = hidden + mixed
    normed = rms_norm(hidden, block.mlp_norm.weight, block.mlp_norm.eps)
    mlp = block.mlp
    return hidden + linear(F.silu(linear(normed, mlp.gate_proj)) * linear(normed, mlp.up_proj), mlp.down_proj)


def channel_log_decay(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The per-key-channel log decay [B, T, H, Dk] of ``gla`` (fla's GLA gate) or ``kda`` (fla's KDA gate)."""
    gate = layer.channel_decay
    logits = linear(x, gate.proj).unflatten(-1, (layer.num_heads, layer.head_dim))
    if layer.memory == "gla":
        return F.logsigmoid(logits) * GATE_POWER
    rate = F.softplus(logits + gate.dt_bias.view(layer.num_heads, layer.head_dim))
    return -gate.A_log.exp()[:, None] * rate


def randomise_(module: nn.Module, seed: int, scale: float = 0.3) -> nn.Module:
    """Add ``scale * N(0, 1)`` to every parameter (biases and norm weights included), in place, so that
    no term of the forward hides behind a zero or one initialisation."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module
