"""The attention mixer's short convolution: decoding equals the full pass, pads enter it as zeros, beams
reorder its buffers, and a bad width is a one-line error."""

from __future__ import annotations

import pytest
import torch

from mcrnn.layers.attention import Attention
from mcrnn.models import MCConfig


def _layer(conv_size: int) -> Attention:
    torch.manual_seed(0)
    return Attention(16, 2, conv_size=conv_size).double()


@pytest.mark.parametrize("conv_size", [0, 1, 4])
def test_token_by_token_decoding_equals_the_full_pass(conv_size):
    layer = _layer(conv_size)
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    full, _ = layer(x)
    y, cache = layer(x[:, :3], use_cache=True)
    steps = [y]
    for t in range(3, 7):
        y, cache = layer(x[:, t : t + 1], cache=cache, use_cache=True)
        steps.append(y)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-12, atol=1e-12)


def test_the_convolution_changes_the_output_and_sees_only_the_past():
    x = torch.randn(1, 6, 16, dtype=torch.float64)
    with_conv, _ = _layer(4)(x)
    changed = x.clone()
    changed[:, 4] += 1.0
    after, _ = _layer(4)(changed)
    torch.testing.assert_close(after[:, :4], with_conv[:, :4], rtol=0, atol=0)
    assert not torch.allclose(after[:, 4:], with_conv[:, 4:])
    without, _ = _layer(0)(x)
    assert with_conv.shape == without.shape


def test_left_padding_equals_the_row_alone():
    layer = _layer(4)
    x = torch.randn(1, 5, 16, dtype=torch.float64)
    padded = torch.cat([torch.randn(1, 3, 16, dtype=torch.float64), x], 1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    alone, _ = layer(x)
    batched, _ = layer(padded, attention_mask=mask)
    # RoPE is relative, but its angles are float32 (as in transformers): shifted positions differ ~1e-10
    torch.testing.assert_close(batched[:, 3:], alone, rtol=1e-8, atol=1e-8)
    unmasked, _ = layer(padded)  # without the mask the pads would reach the real tokens
    assert not torch.allclose(unmasked[:, 3:], alone, rtol=1e-8, atol=1e-8)


def test_reorder_selects_the_convolution_buffers():
    layer = _layer(3)
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    _, cache = layer(x, use_cache=True)
    picked = cache.reorder(torch.tensor([2, 0]))
    torch.testing.assert_close(picked.conv["k"], cache.conv["k"][[2, 0]], rtol=0, atol=0)
    step = torch.randn(2, 1, 16, dtype=torch.float64)
    y, _ = layer(step, cache=picked)
    _, alone = layer(x[[2, 0]], use_cache=True)
    expected, _ = layer(step, cache=alone)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bad", [-1, 2.0, True])
def test_bad_conv_size_is_a_one_line_error(bad):
    with pytest.raises(ValueError, match="conv_size must be an int >= 0"):
        Attention(16, 2, conv_size=bad)
    with pytest.raises(ValueError, match="conv_size must be an int >= 0"):
        MCConfig(vocab_size=11, hidden_size=16, num_heads=2, mixer="attention", attention_conv_size=bad)
