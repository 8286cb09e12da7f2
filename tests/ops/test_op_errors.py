"""Bad input to ``memory_caching`` raises a clear error naming the argument."""

from __future__ import annotations

import pytest
import torch

from mcrnn.ops import memory_caching
from mcrnn.ops.memories import Linear


def tensors(batch=1, seq_len=6, heads=2, key_dim=4, value_dim=3):
    return (
        torch.randn(batch, seq_len, heads, key_dim),
        torch.randn(batch, seq_len, heads, key_dim),
        torch.randn(batch, seq_len, heads, value_dim),
    )


@pytest.mark.parametrize(
    "change,kwargs,error,match",
    [
        (lambda q, k, v: (q[0], k, v), {}, ValueError, "q must be"),
        (lambda q, k, v: (q, k[:, :5], v), {}, ValueError, "k must have the shape of q"),
        (lambda q, k, v: (q, k, v[:, :, :1]), {}, ValueError, "v must be"),
        (lambda q, k, v: (q, k[..., :3], v), {}, ValueError, "k must have the shape"),
        (
            lambda q, k, v: (q, k, torch.ones(v.shape, dtype=torch.long)),
            {},
            TypeError,
            "v must have a floating",
        ),
        (lambda q, k, v: (q, k, v), {"segment_size": 0}, ValueError, "segment_size"),
        (lambda q, k, v: (q, k, v), {"segment_size": 2.5}, ValueError, "segment_size"),
        (lambda q, k, v: (q, k, v), {"segment_lengths": [2, 0, 4]}, ValueError, "ints >= 1"),
        (lambda q, k, v: (q, k, v), {"segment_lengths": []}, ValueError, "non-empty"),
        (lambda q, k, v: (q, k, v), {"segment_size": 2, "segment_lengths": [6]}, ValueError, "not both"),
        (lambda q, k, v: (q, k, v), {"aggregation": "ssc"}, ValueError, "top_k"),
        (lambda q, k, v: (q, k, v), {"aggregation": "ssc", "top_k": 0}, ValueError, "top_k"),
        (lambda q, k, v: (q, k, v), {"aggregation": "mean"}, ValueError, "aggregation"),
        (lambda q, k, v: (q, k, v), {"init": "zero"}, ValueError, "init"),
        (lambda q, k, v: (q, k, v), {"pooling": "max"}, ValueError, "pooling"),
        (lambda q, k, v: (q, k, v), {"memory": "lstm"}, ValueError, "memory"),
        (lambda q, k, v: (q, k, v), {"backend": "cuda"}, ValueError, "backend"),
        (lambda q, k, v: (q, k, v), {"memory": Linear(torch.full((1, 6, 2), 0.1))}, ValueError, "log_decay"),
        (lambda q, k, v: (q, k, v), {"memory": Linear(torch.zeros(1, 6))}, ValueError, "log_decay must be"),
        (lambda q, k, v: (q, k, v), {"memory": "swla"}, ValueError, "prev_gate"),
        (lambda q, k, v: (q, k, v), {"chunk_size": 0}, ValueError, "chunk_size"),
        (lambda q, k, v: (q, k, v), {"cache": {}}, TypeError, "cache"),
    ],
)
def test_bad_input(change, kwargs, error, match):
    q, k, v = change(*tensors())
    with pytest.raises(error, match=match):
        memory_caching(q, k, v, **kwargs)


def test_u_with_other_key_dim():
    q, k, v = tensors()
    with pytest.raises(ValueError, match="u must have the shape of q"):
        memory_caching(q, k, v, torch.randn(1, 6, 2, 5))


def test_batch_mismatch():
    q, k, v = tensors()
    with pytest.raises(ValueError, match="k must have the shape of q"):
        memory_caching(q, torch.randn(2, 6, 2, 4), v)
