"""The MC token-mixing layer: shapes, decoding equals the parallel forward, padding, bad input."""

from __future__ import annotations

import pytest
import torch

from mcrnn.layers import MemoryCachingAttention

TOL = dict(atol=1e-10, rtol=1e-10)


def make_layer(memory="linear", aggregation="grm", **kwargs):
    torch.manual_seed(0)
    top_k = 1 if aggregation == "ssc" else None
    return MemoryCachingAttention(
        32,
        4,
        memory=memory,
        aggregation=aggregation,
        top_k=top_k,
        segment_size=kwargs.pop("segment_size", 3),
        **kwargs,
    ).double()


def hidden(batch=2, seq_len=11, seed=1):
    return torch.randn(batch, seq_len, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "memory,segmentation", [("linear", "constant"), ("swla", "constant"), ("linear", "log")]
)
@pytest.mark.parametrize("aggregation", ["residual", "grm", "ssc", "average"])
@pytest.mark.parametrize("init", ["checkpoint", "independent"])
def test_decoding_equals_parallel(memory, segmentation, aggregation, init):
    options = {"segment_size": None, "segmentation": "log"} if segmentation == "log" else {}
    layer = make_layer(memory, aggregation, init=init, **options)
    x = hidden()
    expected, _ = layer(x)
    out, cache = layer(x[:, :4], use_cache=True)
    outputs = [out]
    for t in range(4, x.shape[1]):
        out, cache = layer(x[:, t : t + 1], cache=cache, use_cache=True)
        outputs.append(out)
    torch.testing.assert_close(torch.cat(outputs, 1), expected, **TOL)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"use_decay": False},
        {"conv_size": 0},
        {"separate_router": False},
        {"segment_size": None},
        {"segment_lengths": [4, 4, 3], "segment_size": None},
    ],
)
def test_variants_run_and_backprop(options):
    layer = make_layer(**options)
    x = hidden().requires_grad_()
    y, cache = layer(x)
    assert y.shape == x.shape and cache is None
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in layer.parameters())


def test_right_padding_is_honoured():
    layer = make_layer(aggregation="ssc")
    x = hidden()
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, 6:] = 0
    padded, _ = layer(x, attention_mask=mask)
    alone, _ = layer(x[1:, :6])
    torch.testing.assert_close(padded[1, :6], alone[0], **TOL)
    torch.testing.assert_close(padded[0], layer(x[:1])[0][0], **TOL)
    _, cache = layer(x, attention_mask=mask, use_cache=True)
    _, cache_alone = layer(
        torch.cat([x[1:, :6], torch.zeros(1, 5, 32, dtype=torch.float64)], 1),
        attention_mask=mask[1:],
        use_cache=True,
    )
    torch.testing.assert_close(cache.op.online[1], cache_alone.op.online[0], **TOL)


def test_masked_tokens_inside_a_row_are_skipped_and_bad_masks_rejected():
    """A 0 inside a row (generate infers one from a pad id in the prompt) removes that token: the row
    equals the row without it."""
    layer = make_layer()
    x = hidden()
    mask = torch.ones(2, 11)
    mask[0, 3] = 0
    y, _ = layer(x, attention_mask=mask)
    alone, _ = layer(torch.cat([x[:1, :3], x[:1, 4:]], dim=1))
    torch.testing.assert_close(torch.cat([y[:1, :3], y[:1, 4:]], dim=1), alone, **TOL)
    torch.testing.assert_close(y[1:], layer(x[1:])[0], **TOL)
    with pytest.raises(ValueError, match="attention_mask must be"):
        layer(x, attention_mask=torch.ones(2, 10))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"memory": "gru"}, "memory"),
        ({"aggregation": "max"}, "aggregation"),
        ({"init": "x"}, "init"),
        ({"aggregation": "ssc"}, "top_k"),
        ({"segment_size": 0}, "segment_size"),
        ({"pooling": "max"}, "pooling"),
    ],
)
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MemoryCachingAttention(32, 4, **kwargs)


def test_indivisible_hidden_size():
    with pytest.raises(ValueError, match="divisible"):
        MemoryCachingAttention(30, 4)


def test_wrong_input_width():
    with pytest.raises(ValueError, match=r"x must be \[B, T, 32\]"):
        make_layer()(torch.randn(2, 5, 16, dtype=torch.float64))


def test_bfloat16_forward():
    layer = MemoryCachingAttention(32, 4, segment_size=4).to(torch.bfloat16)
    y, _ = layer(torch.randn(2, 9, 32, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
