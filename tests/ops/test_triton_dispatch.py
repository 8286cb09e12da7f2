"""When the Triton kernels apply (``use_triton`` / ``unsupported_reason``); no kernel runs here."""

from __future__ import annotations

import warnings

import pytest
import torch

from mcrnn.ops import memory_caching
from mcrnn.ops.linear.triton import triton_available, unsupported_reason, use_triton


def _qkv(key_dim=16, value_dim=16, dtype=torch.float32):
    q = torch.zeros(1, 4, 2, key_dim, dtype=dtype)
    return q, q.clone(), torch.zeros(1, 4, 2, value_dim, dtype=dtype)


def test_cpu_needs_the_interpreter(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "TRITON_INTERPRET" in unsupported_reason(*_qkv(), head_dims=(16, 16))
    assert not use_triton(*_qkv(), head_dims=(16, 16))  # the normal CPU path: no warning
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert unsupported_reason(*_qkv(), head_dims=(16, 16)) is None


@pytest.mark.parametrize(("dims", "dtype", "words"), [
    ((48, 16), torch.float32, "head dim 48"),
    ((16, 512), torch.float32, "head dim 512"),
    ((8, 16), torch.float32, "head dim 8"),
    ((16, 16), torch.float64, "dtypes"),
])
def test_unsupported_shapes_and_dtypes(monkeypatch, dims, dtype, words):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert words in unsupported_reason(*_qkv(*dims, dtype=dtype), head_dims=dims)


def test_mixed_devices_raise():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="one device"):
        unsupported_reason(q, k.to("meta"), v, head_dims=(16, 16))


def test_without_triton(monkeypatch):
    monkeypatch.setattr("mcrnn.ops.linear.triton.triton_available", lambda: False)
    assert unsupported_reason(*_qkv(), head_dims=(16, 16)) == "triton is not installed"
    assert isinstance(triton_available(), bool)


def test_explicit_triton_on_the_cpu_is_refused_auto_falls_back(monkeypatch):
    """``backend="triton"`` on a CPU tensor used to warn and run PyTorch; the request cannot be met: an
    error. ``auto`` still picks PyTorch on the CPU, silently."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q = torch.randn(1, 8, 2, 16)
    with pytest.raises(ValueError, match=r"backend='triton' cannot run on device cpu \(Triton needs CUDA"):
        memory_caching(q, q, q, segment_size=4, backend="triton")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        auto = memory_caching(q, q, q, segment_size=4, backend="auto")
    torch.testing.assert_close(auto, memory_caching(q, q, q, segment_size=4, backend="torch"))
