"""The deep memories' inner rule against a hand-written MLP, loss and gradient (DESIGN.md §6).

Nothing here comes from :mod:`mcrnn.ops.deep.network`: the memory ``f(x) = x + W_2 gelu(W_1 x)``, the
losses ``dla: -<f(k), v>`` and ``titans: ||f(k) - v||^2`` and their gradients (autograd through this
file's own formulas) are written out, so a sign flipped consistently in the library's forward,
backward and loss (gradient ascent) differs from them.
"""

from __future__ import annotations

import math

import pytest
import torch
from op_inputs import mc_flat

B, T, H, D, E = 2, 6, 2, 4, 2


def gelu(z: torch.Tensor) -> torch.Tensor:
    """Exact GELU ``z Phi(z)``."""
    return 0.5 * z * (1.0 + torch.erf(z / math.sqrt(2.0)))


def mlp(w1: torch.Tensor, w2: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``x + W_2 gelu(W_1 x)`` for weights ``[B, H, out, in]`` and ``x`` [B, H, D]."""
    hidden = gelu(torch.einsum("bhoi,bhi->bho", w1, x))
    return x + torch.einsum("bhoi,bhi->bho", w2, hidden)


def loss(memory: str, w1: torch.Tensor, w2: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Per (batch, head) inner loss [B, H] of one token."""
    y = mlp(w1, w2, k)
    return -(y * v).sum(-1) if memory == "dla" else (y - v).pow(2).sum(-1)


def gradient(
    memory: str, weights: list[torch.Tensor], k: torch.Tensor, v: torch.Tensor
) -> list[torch.Tensor]:
    """``d loss / d (W_1, W_2)`` per (batch, head) by autograd of the explicit loss."""
    leaves = [w.detach().requires_grad_() for w in weights]
    return list(torch.autograd.grad(loss(memory, *leaves, k, v).sum(), leaves))


def inputs(memory: str, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    q, k = (torch.nn.functional.normalize(rand(B, T, H, D), dim=-1) for _ in range(2))
    return dict(
        q=q, k=k, v=rand(B, T, H, D), memory=memory,
        params=[0.5 * rand(H, E * D, D), 0.5 * rand(H, D, E * D)],
        eta=0.05 + 0.1 * torch.rand(B, T, H, generator=gen, dtype=torch.float64),
        alpha=0.8 + 0.2 * torch.rand(B, T, H, generator=gen, dtype=torch.float64),
        momentum=(
            0.9 * torch.rand(B, T, H, generator=gen, dtype=torch.float64) if memory == "titans" else None
        ),
    )


def scalar(x: torch.Tensor) -> torch.Tensor:
    """[B, H] -> [B, H, 1, 1] to scale per-head weights."""
    return x[..., None, None]


@pytest.mark.parametrize("memory", ["dla", "titans"])
def test_one_step_is_minus_eta_times_the_gradient_and_lowers_the_loss(memory: str) -> None:
    """One token, retention 1, no momentum: ``theta_1 = theta_0 - eta grad l(theta_0)``, and
    ``l(theta_1) < l(theta_0)`` on that token."""
    data = inputs(memory)
    data.update({name: data[name][:, :1] for name in ("q", "k", "v", "eta")})
    data["alpha"] = torch.ones_like(data["eta"])
    data["momentum"] = torch.zeros_like(data["eta"]) if memory == "titans" else None
    _, cache = mc_flat(**data, chunk_size=1, output_cache=True)
    start = [w.unsqueeze(0).expand(B, -1, -1, -1) for w in data["params"]]
    k, v = data["k"][:, 0], data["v"][:, 0]
    grads = gradient(memory, start, k, v)
    expected = [w - scalar(data["eta"][:, 0]) * g for w, g in zip(start, grads, strict=True)]
    for got, want in zip(cache.weights, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    assert bool((loss(memory, *cache.weights, k, v) < loss(memory, *start, k, v)).all())


@pytest.mark.parametrize("memory", ["dla", "titans"])
@pytest.mark.parametrize("chunk_size", [1, 2, 3])
def test_sequence_matches_hand_written_rule(memory: str, chunk_size: int) -> None:
    """T tokens with retention and momentum: ``S_t = b_t S_{t-1} - eta_t g_t``,
    ``theta_t = a_t theta_{t-1} + S_t`` (titans; dla: ``theta_t = a_t theta_{t-1} - eta_t g_t``) with
    ``g_t`` the explicit gradient at the chunk's start weights; outputs ``f_{theta_t}(q_t)`` and the final
    weights, on the chunk path and the naive path."""
    data = inputs(memory, seed=1)
    weights = [w.unsqueeze(0).expand(B, -1, -1, -1) for w in data["params"]]
    momentum = [torch.zeros_like(w) for w in weights]
    outputs = []
    for t in range(T):
        if t % chunk_size == 0:
            chunk_start = weights
        grads = gradient(memory, chunk_start, data["k"][:, t], data["v"][:, t])
        step, retain = scalar(data["eta"][:, t]), scalar(data["alpha"][:, t])
        if memory == "titans":
            momentum = [
                scalar(data["momentum"][:, t]) * s - step * g for s, g in zip(momentum, grads, strict=True)
            ]
            weights = [retain * w + s for w, s in zip(weights, momentum, strict=True)]
        else:
            weights = [retain * w - step * g for w, g in zip(weights, grads, strict=True)]
        outputs.append(mlp(*weights, data["q"][:, t]))
    expected = torch.stack(outputs, 1)
    out, cache = mc_flat(**data, chunk_size=chunk_size, output_cache=True)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(mc_flat(**data, chunk_size=chunk_size, backend="naive"), expected,
                               atol=1e-10, rtol=1e-10)
    for got, want in zip(cache.weights, weights, strict=True):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
