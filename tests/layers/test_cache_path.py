"""One cache path (DESIGN.md §9): the cache is checked once per call, the layer's own spec is not
compared field by field on every decoded token, and neither the op nor the layer modifies a cache passed
in."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mcrnn.layers import MemoryCachingAttention
from mcrnn.ops import MCSpec, MemoryCache, memory_caching


@pytest.mark.parametrize("memory", ["linear", "deltanet", "titans"])
def test_layer_decoding_checks_the_cache_once_and_compares_no_spec_fields(monkeypatch, memory: str) -> None:
    torch.manual_seed(0)
    layer = MemoryCachingAttention(16, num_heads=2, memory=memory, segment_size=4, chunk_size=2).eval()
    x = torch.randn(2, 7, 16)
    _, cache = layer(x[:, :5], use_cache=True)
    checks = []
    original = MemoryCache.check_compatible
    counted = lambda self, *shape: checks.append(shape) or original(self, *shape)  # noqa: E731
    monkeypatch.setattr(MemoryCache, "check_compatible", counted)
    monkeypatch.setattr(MCSpec, "to_dict", lambda self: pytest.fail("the spec was compared field by field"))
    for t in range(5, 7):
        _, cache = layer(x[:, t : t + 1], cache=cache, use_cache=True)
    assert len(checks) == 2


def test_ops_never_modify_a_cache_passed_in() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 6, 2, 4) for _ in range(3))
    _, cache = memory_caching(q[:, :5], k[:, :5], v[:, :5], segment_size=2, output_cache=True)
    before = {f.name: getattr(cache, f.name) for f in dataclasses.fields(cache)}
    snapshot = {name: x.clone() if isinstance(x, torch.Tensor) else x for name, x in before.items()}
    _, new = memory_caching(q[:, 5:], k[:, 5:], v[:, 5:], cache=cache, output_cache=True)
    assert new is not cache and new.position == cache.position + 1
    for name, value in snapshot.items():
        current = getattr(cache, name)
        assert current is before[name]
        if isinstance(value, torch.Tensor):
            assert torch.equal(current, value)
        else:
            assert current == value


def test_a_conflicting_spec_is_still_an_error() -> None:
    q = torch.randn(1, 5, 2, 4)
    _, cache = memory_caching(q, q, q, segment_size=2, output_cache=True)
    with pytest.raises(ValueError, match=r"segment_size=3 \(cache: 2\)"):
        memory_caching(q[:, :1], q[:, :1], q[:, :1], spec=MCSpec(segment_size=3), cache=cache)
