"""Packed documents (cu_seqlens): no state, context, segment or attention crosses a boundary."""

from __future__ import annotations

import pytest
import torch
from mixer_configs import MIXERS, TINY

from mcrnn.layers import MemoryCachingAttention
from mcrnn.models import MCConfig, MCForCausalLM

LENGTHS = (9, 4, 6)


@pytest.mark.parametrize("name", list(MIXERS))
def test_packed_equals_separate(name: str) -> None:
    torch.manual_seed(0)
    model = MCForCausalLM(MCConfig(**TINY, **MIXERS[name])).eval()
    gen = torch.Generator().manual_seed(1)
    docs = [torch.randint(0, 37, (n,), generator=gen) for n in LENGTHS]
    packed = torch.cat(docs)[None]
    cu_seqlens = torch.tensor([0, *LENGTHS]).cumsum(0)
    with torch.no_grad():
        logits = model(packed, cu_seqlens=cu_seqlens).logits
        separate = torch.cat([model(doc[None]).logits for doc in docs], dim=1)
    torch.testing.assert_close(logits, separate, atol=1e-5, rtol=1e-4)


def test_packed_gradients_and_loss_ignore_cross_document_targets() -> None:
    torch.manual_seed(0)
    layer = MemoryCachingAttention(8, 2, segment_size=3, aggregation="grm").double()
    x = torch.randn(1, 12, 8, dtype=torch.float64, requires_grad=True)
    cu = torch.tensor([0, 5, 12])
    y, _ = layer(x, cu_seqlens=cu)
    expected = torch.cat([layer(x[:, :5])[0], layer(x[:, 5:])[0]], dim=1)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    (grad,) = torch.autograd.grad(y[:, :5].sum(), x)
    assert torch.equal(grad[:, 5:], torch.zeros_like(grad[:, 5:]))  # the second document is unreachable
    model = MCForCausalLM(MCConfig(**TINY, segment_size=4)).eval()
    ids = torch.randint(0, 37, (1, 12))
    with torch.no_grad():
        loss = model(ids, labels=ids, cu_seqlens=cu).loss
        first = model(ids[:, :5], labels=ids[:, :5]).loss
        second = model(ids[:, 5:], labels=ids[:, 5:]).loss
    torch.testing.assert_close(loss, (4 * first + 6 * second) / 10)


def test_bad_cu_seqlens() -> None:
    layer = MemoryCachingAttention(8, 2, segment_size=3)
    x = torch.randn(1, 6, 8)
    with pytest.raises(ValueError, match=r"rise strictly from 0 to T=6, got \[0, 4, 4, 6\]"):
        layer(x, cu_seqlens=torch.tensor([0, 4, 4, 6]))
    with pytest.raises(ValueError, match=r"shape \[1, T, C\]"):
        layer(torch.randn(2, 6, 8), cu_seqlens=torch.tensor([0, 6]))
    with pytest.raises(ValueError, match="takes no attention_mask, cache or use_cache"):
        layer(x, cu_seqlens=torch.tensor([0, 6]), use_cache=True)
