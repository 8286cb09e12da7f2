"""The shared read side takes a per-key-channel decay where a write rule supplies one (DESIGN.md §9).

A per-head decay ``a_t`` [B, H] and the same decay repeated over the key channels [B, H, Dk] must give the
same decode steps and prefill caches; a decay that differs per channel scales the state's rows
(``Diag(a_t) M``), checked against the product written out.
"""

from __future__ import annotations

import pytest
import torch

from mcrnn.ops import MCSpec
from mcrnn.ops.read.fenwick_cache import fenwick_prefill_cache, fenwick_step
from mcrnn.ops.read.matrix_cache import MatrixMemoryCache, decayed, open_token, recurrent_step

B, T, H, DK, DV = 2, 11, 3, 4, 5


def _inputs() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    shapes = {"q": (B, T, H, DK), "k": (B, T, H, DK), "v": (B, T, H, DV), "u": (B, T, H, DK)}
    out = {name: torch.randn(*shape, generator=gen, dtype=torch.float64) for name, shape in shapes.items()}
    out["log_decay"] = -torch.rand(B, T, H, generator=gen, dtype=torch.float64)
    return out


def test_decayed_scales_rows_per_channel() -> None:
    state = torch.randn(B, H, DK, DV, dtype=torch.float64)
    decay = torch.rand(B, H, DK, dtype=torch.float64)
    expected = torch.einsum("bhk,bhkv->bhkv", decay, state)
    torch.testing.assert_close(decayed(state, decay), expected, rtol=0, atol=0)
    per_head = torch.rand(B, H, dtype=torch.float64)
    torch.testing.assert_close(decayed(state, per_head), per_head[..., None, None] * state, rtol=0, atol=0)


@pytest.mark.parametrize("init", ["checkpoint", "independent"])
def test_matrix_step_takes_channel_decay(init: str) -> None:
    x = _inputs()
    spec = MCSpec(segment_size=4, init=init)
    caches = [MatrixMemoryCache.empty(spec, "linear", B, H, DK, DV, torch.float64, torch.device("cpu"))] * 2
    for t in range(T):
        write = x["k"][:, t].unsqueeze(-1) * x["v"][:, t].unsqueeze(-2)
        decay = x["log_decay"][:, t].exp()
        outs = []
        for i, step_decay in enumerate((decay, decay.unsqueeze(-1).expand(-1, -1, DK))):
            q, k, u = x["q"][:, t], x["k"][:, t], x["u"][:, t]
            y, caches[i] = recurrent_step(q, k, u, cache=open_token(caches[i]), write=write, decay=step_decay)
            outs.append(y)
        torch.testing.assert_close(outs[1], outs[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("prefill", [6, 8])
@pytest.mark.parametrize("init", ["checkpoint", "independent"])
def test_fenwick_prefill_and_step_take_channel_decay(init: str, prefill: int) -> None:
    x = _inputs()
    spec = MCSpec(segmentation="log", init=init)
    channel = x["log_decay"].unsqueeze(-1).expand(-1, -1, -1, DK)
    caches = [
        fenwick_prefill_cache(spec, x["k"][:, :prefill], x["v"][:, :prefill], decay[:, :prefill])
        for decay in (x["log_decay"], channel)
    ]
    torch.testing.assert_close(caches[1].online, caches[0].online, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(caches[1].cached, caches[0].cached, rtol=1e-12, atol=1e-12)
    for t in range(prefill, T):
        write = x["k"][:, t].unsqueeze(-1) * x["v"][:, t].unsqueeze(-2)
        outs = []
        for i, decay in enumerate((x["log_decay"], channel)):
            q, k, u = x["q"][:, t], x["k"][:, t], x["u"][:, t]
            y, caches[i] = fenwick_step(q, k, u, cache=caches[i], write=write, log_decay=decay[:, t])
            outs.append(y)
        torch.testing.assert_close(outs[1], outs[0], rtol=1e-12, atol=1e-12)
