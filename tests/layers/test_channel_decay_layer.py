"""The MC layer over the per-channel-decay memories (gla, kda): fla's gates, decoding equals the parallel
forward (every segmentation), right padding writes nothing."""

from __future__ import annotations

import math

import pytest
import torch

from mcrnn.layers import MemoryCachingAttention

TOL = dict(atol=1e-10, rtol=1e-10)
MEMORIES = ("gla", "kda")


def channel_layer(memory: str, **options) -> MemoryCachingAttention:
    torch.manual_seed(0)
    return MemoryCachingAttention(32, 4, memory=memory, **{"segment_size": 3, **options}).double()


def hidden(batch: int = 2, seq_len: int = 11) -> torch.Tensor:
    return torch.randn(batch, seq_len, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("memory", MEMORIES)
def test_gates_follow_fla_and_train(memory):
    """gla: ``logsigmoid(x W + b) / 16``; kda: ``-exp(A_log) softplus(x W + dt_bias)`` over fla's init
    ranges (A_log in [0, log 16], softplus(dt_bias) in [1e-3, 0.1]) and a beta projection; [B, T, H, Dk],
    <= 0; every parameter gets a finite gradient."""
    layer = channel_layer(memory, use_decay=False)
    gate = layer.channel_decay
    x = hidden()
    logits = (x @ gate.proj.weight.T + (gate.proj.bias if memory == "gla" else 0.0)).unflatten(-1, (4, 8))
    if memory == "gla":
        want = torch.nn.functional.logsigmoid(logits) / 16
    else:
        assert bool((gate.A_log >= 0).all() and (gate.A_log <= math.log(16) + 1e-12).all())
        dt = torch.nn.functional.softplus(gate.dt_bias)
        assert bool((dt >= 1e-3 - 1e-12).all() and (dt <= 0.1 + 1e-9).all())
        rate = torch.nn.functional.softplus(logits + gate.dt_bias.view(4, 8))
        want = -gate.A_log.exp().unsqueeze(-1) * rate
    got = gate(x)
    assert got.shape == (2, 11, 4, 8) and bool((got <= 0).all())
    torch.testing.assert_close(got, want, **TOL)
    assert layer.decay_proj is None and (layer.beta_proj is not None) == (memory == "kda")
    x = x.requires_grad_()
    layer(x)[0].square().mean().backward()
    assert all(p.grad is not None and bool(p.grad.isfinite().all()) for p in layer.parameters())


@pytest.mark.parametrize(
    "memory,options",
    [
        ("gla", {"aggregation": "grm"}),
        ("gla", {"aggregation": "ssc", "top_k": 1, "init": "independent"}),
        ("gla", {"aggregation": "grm", "segment_size": None, "segmentation": "log", "init": "independent"}),
        ("kda", {"aggregation": "residual", "init": "independent"}),
        ("kda", {"aggregation": "grm", "segment_size": None, "segmentation": "log"}),
    ],
)
def test_decoding_equals_parallel(memory, options):
    layer = channel_layer(memory, **options)
    x = hidden()
    expected, _ = layer(x)
    out, cache = layer(x[:, :4], use_cache=True)
    outputs = [out]
    for t in range(4, x.shape[1]):
        out, cache = layer(x[:, t : t + 1], cache=cache, use_cache=True)
        outputs.append(out)
    torch.testing.assert_close(torch.cat(outputs, 1), expected, **TOL)


@pytest.mark.parametrize("memory", MEMORIES)
def test_right_padding_writes_nothing(memory):
    """Pads write nothing and decay nothing (the per-channel decay is masked too): the padded row equals
    the row alone, outputs and cache."""
    layer = channel_layer(memory, aggregation="grm")
    x = hidden()
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, 6:] = 0
    padded, cache = layer(x, attention_mask=mask, use_cache=True)
    alone, cache_alone = layer(x[1:, :6], use_cache=True)
    torch.testing.assert_close(padded[1, :6], alone[0], **TOL)
    torch.testing.assert_close(cache.op.online[1], cache_alone.op.online[0], **TOL)
