"""Triton fused ``grm_read`` (router softmax inside the cached read) against a plain-torch reference."""

from __future__ import annotations

import pytest
import torch
from triton_kernels import require_triton_kernels

triton = require_triton_kernels()  # before any import of mcrnn's kernels

from mcrnn.ops.linear.triton import grm_read  # noqa: E402


def reference(q, u, contexts, online, online_logit, states, lengths):
    """``softmax`` over ``<u_t, c_i>`` (i < s(t)) and the online logit, then the gated reads."""
    counts = torch.tensor(lengths, device=q.device)
    seg = torch.repeat_interleave(torch.arange(len(lengths), device=q.device), counts)
    visible = torch.arange(len(lengths), device=q.device).view(1, -1) < seg.view(-1, 1)  # [T, N]
    logits = torch.einsum("bthk,bnhk->bthn", u, contexts).masked_fill(~visible[None, :, None], float("-inf"))
    p = torch.softmax(torch.cat([logits, online_logit.unsqueeze(-1)], -1), -1)
    reads = torch.einsum("bthk,bnhkv->bthnv", q, states)
    return torch.einsum("bthn,bthnv->bthv", p[..., :-1], reads) + p[..., -1:] * online


def _inputs(lengths, heads=2, key_dim=16, value_dim=32, batch=2, device="cpu", dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    seq_len, n_seg = sum(lengths), len(lengths)
    shapes = [
        (batch, seq_len, heads, key_dim),  # q
        (batch, seq_len, heads, key_dim),  # u
        (batch, n_seg, heads, key_dim),  # contexts
        (batch, seq_len, heads, value_dim),  # online
        (batch, seq_len, heads),  # online logit
        (batch, n_seg, heads, key_dim, value_dim),  # states
    ]
    return [torch.randn(shape, generator=gen).to(device, dtype) for shape in shapes]


@pytest.mark.parametrize("lengths", [[5, 20, 1, 3], [1] * 6, [16, 16]])
def test_fused_grm_and_grads(lengths):
    inputs = _inputs(lengths)
    leaves = [x.clone().requires_grad_() for x in inputs]
    refs = [x.double().requires_grad_() for x in inputs]
    out = grm_read(*leaves, lengths)
    ref = reference(*refs, lengths)
    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=1e-4)
    dy = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    out.backward(dy)
    ref.backward(dy.double())
    names = ["q", "u", "contexts", "online", "online_logit", "states"]
    for name, mine, r in zip(names, leaves, refs, strict=True):
        torch.testing.assert_close(mine.grad.double(), r.grad, atol=2e-4, rtol=2e-4, msg=name)


def test_large_logits_are_stable():
    """The online max keeps exp() finite when logits are far beyond float32's exp range."""
    lengths = [4, 4, 4]
    q, u, contexts, online, logit, states = _inputs(lengths, batch=1)
    out = grm_read(q, u * 100, contexts * 100, online, logit * 1e3, states, lengths)
    assert torch.isfinite(out).all()
    ref = reference(*(x.double() for x in (q, u * 100, contexts * 100, online, logit * 1e3, states)), lengths)
    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_full_size_bf16():
    lengths = [256] * 16
    inputs = _inputs(lengths, heads=4, key_dim=64, value_dim=64, device="cuda")
    inputs[1] = inputs[1] / 8  # moderate router logits
    leaves = [x.bfloat16().requires_grad_() for x in inputs]
    refs = [x.clone().requires_grad_() for x in inputs]
    out, ref = grm_read(*leaves, lengths), reference(*refs, lengths)
    assert (out.float() - ref).norm() / ref.norm() < 2e-2
    dy = torch.randn_like(ref)
    out.backward(dy.bfloat16())
    ref.backward(dy)
    for mine, r in zip(leaves, refs, strict=True):
        assert (mine.grad.float() - r.grad).norm() / r.grad.norm() < 5e-2
