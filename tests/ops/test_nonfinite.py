"""Non-finite values stay causal: a NaN or Inf at token ``t`` of one sequence (in ``q, k, v, u`` or a
gate) changes no output before ``t`` and no output of another sequence, on every path of
``memory_caching``; the fast paths return NaN exactly where the token loop does.

The parallel paths mask causality inside matmuls (a chunk's attention, the reads of cached states);
multiplying a later token's NaN by a zero weight gives NaN, so they must select instead.
"""

from __future__ import annotations

import functools
import itertools
import math

import pytest
import torch
from op_inputs import mc_flat

from mcrnn.ops.linear import chunk
from mcrnn.ops.linear import triton as mc_triton
from mcrnn.ops.read import matrix

#: the paths themselves, past the public checks (which reject a non-finite gate: tests/ops/test_spec.py)
memory_caching = functools.partial(mc_flat, check_inputs=False)

B, T, H, DK, DV = 2, 21, 2, 8, 4  # T not a multiple of the segment, Dk != Dv
POS, SEGMENT = 11, 5  # the corrupted token (row 0, head 1) and the constant segment size
AGGREGATIONS = ("residual", "grm", "soup", "ssc", "average")
INITS = ("checkpoint", "independent")
LINEAR_INPUTS = ("q", "k", "v", "u", "log_decay")
SWLA_INPUTS = (*LINEAR_INPUTS, "prev_gate", "cur_gate")


def make_inputs(memory: str, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    inputs = {
        "q": torch.randn(B, T, H, DK, generator=gen, dtype=dtype),
        "k": torch.randn(B, T, H, DK, generator=gen, dtype=dtype),
        "v": torch.randn(B, T, H, DV, generator=gen, dtype=dtype),
        "u": torch.randn(B, T, H, DK, generator=gen, dtype=dtype),
        "log_decay": -0.3 * torch.rand(B, T, H, generator=gen, dtype=dtype),
    }
    if memory == "swla":
        inputs["prev_gate"] = torch.rand(B, T, H, generator=gen, dtype=dtype)
        inputs["cur_gate"] = torch.rand(B, T, H, generator=gen, dtype=dtype)
    return inputs


def corrupt(inputs: dict[str, torch.Tensor], name: str, value: float) -> dict[str, torch.Tensor]:
    """A copy of ``inputs`` with ``value`` at token POS of row 0, head 1 (``-inf`` for an Inf log decay)."""
    if name == "log_decay" and math.isinf(value):
        value = -math.inf
    corrupted = dict(inputs)
    corrupted[name] = inputs[name].clone()
    corrupted[name][0, POS, 1] = value
    return corrupted


def options(aggregation: str, init: str, memory: str, segmentation: str = "constant") -> dict:
    extra = {"segmentation": "log"} if segmentation == "log" else {"segment_size": SEGMENT}
    top_k = 2 if aggregation == "ssc" else None
    return dict(aggregation=aggregation, init=init, memory=memory, top_k=top_k, **extra)


def assert_causal(clean: torch.Tensor, dirty: torch.Tensor, name: str) -> None:
    """Outputs before POS and of the other row unchanged; the corrupted token itself is hit."""
    torch.testing.assert_close(dirty[0, :POS], clean[0, :POS])  # earlier outputs
    torch.testing.assert_close(dirty[1], clean[1])  # the other sequence
    if name in ("q", "k", "v"):  # u and the gates can be harmless (residual ignores u, ...)
        assert not dirty[0, POS].isfinite().all()


CONSTANT_CASES = [
    (memory, aggregation, init, name)
    for memory, aggregation, init in itertools.product(("linear", "swla"), AGGREGATIONS, INITS)
    for name in (LINEAR_INPUTS if memory == "linear" else SWLA_INPUTS)
]
LOG_CASES = list(itertools.product(AGGREGATIONS, INITS, LINEAR_INPUTS))


@pytest.mark.parametrize("value", [math.nan, math.inf])
@pytest.mark.parametrize("backend", ["torch", "naive"])
@pytest.mark.parametrize("memory,aggregation,init,name", CONSTANT_CASES)
def test_constant_segments_stay_causal(memory, aggregation, init, name, backend, value):
    inputs = make_inputs(memory)
    opts = options(aggregation, init, memory)
    clean = memory_caching(**inputs, backend=backend, **opts)
    dirty = memory_caching(**corrupt(inputs, name, value), backend=backend, **opts)
    assert_causal(clean, dirty, name)


@pytest.mark.parametrize("value", [math.nan, math.inf])
@pytest.mark.parametrize("backend", ["torch", "naive"])
@pytest.mark.parametrize("aggregation,init,name", LOG_CASES)
def test_log_segments_stay_causal(aggregation, init, name, backend, value):
    inputs = make_inputs("linear")
    opts = options(aggregation, init, "linear", "log")
    clean = memory_caching(**inputs, backend=backend, **opts)
    dirty = memory_caching(**corrupt(inputs, name, value), backend=backend, **opts)
    assert_causal(clean, dirty, name)


def _known_difference(aggregation: str, init: str, name: str, segmentation: str = "constant") -> bool:
    """Where the fast paths give NaN but the token loop a finite value (ssc, independent segments):

    - a NaN key: the loop reads later segments' finite states; the parallel paths' online router key
      is a difference of prefix sums (NaN - NaN) and their top-k ranks a NaN logit like the hidden
      slots (both in mcrnn/ops/read/segments.py);
    - a NaN log decay with log segments: a chunk spans several Fenwick buckets and the decay between
      two of its tokens is a difference of cumulative log decays, NaN past the NaN one.
    """
    if aggregation != "ssc" or init != "independent":
        return False
    return name == "k" or (name == "log_decay" and segmentation == "log")


@pytest.mark.parametrize("chunk_size", [64, 2])  # 2: several chunks per segment (scan steps)
@pytest.mark.parametrize("memory,aggregation,init,name", CONSTANT_CASES)
def test_constant_parallel_returns_nan_where_naive_does(memory, aggregation, init, name, chunk_size):
    if _known_difference(aggregation, init, name):
        pytest.skip("documented difference (see _known_difference)")
    inputs = corrupt(make_inputs(memory), name, math.nan)
    opts = options(aggregation, init, memory)
    fast = memory_caching(**inputs, backend="torch", chunk_size=chunk_size, **opts)
    naive = memory_caching(**inputs, backend="naive", **opts)
    torch.testing.assert_close(fast, naive, equal_nan=True)


@pytest.mark.parametrize("chunk_size", [64, 2])  # 2: levels read from the chunk scan
@pytest.mark.parametrize("aggregation,init,name", LOG_CASES)
def test_log_parallel_returns_nan_where_naive_does(aggregation, init, name, chunk_size):
    if _known_difference(aggregation, init, name, "log"):
        pytest.skip("documented difference (see _known_difference)")
    inputs = corrupt(make_inputs("linear"), name, math.nan)
    opts = options(aggregation, init, "linear", "log")
    fast = memory_caching(**inputs, backend="torch", chunk_size=chunk_size, **opts)
    naive = memory_caching(**inputs, backend="naive", **opts)
    torch.testing.assert_close(fast, naive, equal_nan=True)


@pytest.mark.parametrize("segmentation", ["constant", "log"])
@pytest.mark.parametrize("aggregation,init", [("grm", "checkpoint"), ("ssc", "independent")])
def test_nonfinite_handling_keeps_finite_values(monkeypatch, segmentation, aggregation, init):
    """The exact path for non-finite values (taken when ``all_finite`` says no, which a sum of finite
    values that overflows also does) gives the fast path's values on finite inputs."""
    inputs = make_inputs("linear")
    opts = options(aggregation, init, "linear", segmentation)
    fast = memory_caching(**inputs, backend="torch", chunk_size=2, **opts)
    for module in (chunk, matrix):
        monkeypatch.setattr(module, "all_finite", lambda *tensors: False)
    exact = memory_caching(**inputs, backend="torch", chunk_size=2, **opts)
    torch.testing.assert_close(exact, fast)


def _split(inputs: dict[str, torch.Tensor], start: int, end: int) -> dict[str, torch.Tensor]:
    return {name: x[:, start:end] for name, x in inputs.items()}


@pytest.mark.parametrize("segmentation", ["constant", "log"])
@pytest.mark.parametrize("memory,aggregation,init,name", [c for c in CONSTANT_CASES if c[3] in ("k", "v")])
def test_prefill_then_decode_stays_causal(segmentation, memory, aggregation, init, name):
    """Prefill 16 tokens (the NaN at 11 among them) with the parallel path, decode the rest from its
    cache: prefill outputs before 11 and every output of the other row are unchanged."""
    if segmentation == "log" and memory == "swla":
        pytest.skip("log segmentation supports memory='linear' only")
    prefill = 16
    opts = options(aggregation, init, memory, segmentation)

    def run(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        first, cache = memory_caching(
            **_split(inputs, 0, prefill), output_cache=True, backend="torch", **opts
        )
        rest = memory_caching(**_split(inputs, prefill, T), cache=cache, **opts)
        return torch.cat([first, rest], dim=1)

    inputs = make_inputs(memory)
    dirty_inputs = corrupt(inputs, name, math.nan)
    dirty = run(dirty_inputs)
    assert_causal(run(inputs), dirty, name)
    if not _known_difference(aggregation, init, name, segmentation):
        naive = memory_caching(**dirty_inputs, backend="naive", **opts)
        torch.testing.assert_close(dirty, naive, equal_nan=True)


triton_ready = pytest.mark.skipif(
    mc_triton.unsupported_reason(torch.zeros(1), head_dims=(16,)) is not None,
    reason="Triton kernels cannot run here (no triton, or no GPU and no TRITON_INTERPRET=1)",
)
TRITON_CASES = [
    (memory, aggregation, init, name)
    # one aggregation per read kernel: dense gates, fused softmax, top-k
    for memory, aggregation, init in itertools.product(("linear", "swla"), ("residual", "grm", "ssc"), INITS)
    for name in (("k", "v", "log_decay") if memory == "linear" else ("prev_gate", "cur_gate"))
]


@triton_ready
@pytest.mark.parametrize("memory,aggregation,init,name", TRITON_CASES)
def test_triton_stays_causal(memory, aggregation, init, name):
    """float32 in the interpreter (head dims must be powers of two: 16); chunks of 16 tokens."""
    gen = torch.Generator().manual_seed(1)
    inputs = {name: x.float() for name, x in make_inputs(memory).items()}
    inputs["v"] = torch.randn(B, T, H, 16, generator=gen)
    inputs.update({n: torch.randn(B, T, H, 16, generator=gen) for n in ("q", "k", "u")})
    opts = options(aggregation, init, memory)
    clean = memory_caching(**inputs, backend="triton", **opts)
    dirty_inputs = corrupt(inputs, name, math.nan)
    dirty = memory_caching(**dirty_inputs, backend="triton", **opts)
    assert_causal(clean, dirty, name)
    if not _known_difference(aggregation, init, name):
        naive = memory_caching(**dirty_inputs, backend="naive", **opts)
        torch.testing.assert_close(dirty, naive.float(), equal_nan=True, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("memory", ["dla", "titans"])
@pytest.mark.parametrize("name", ["k", "v", "eta"])
def test_deep_memories_stay_causal(memory, name):
    gen = torch.Generator().manual_seed(0)
    q, k, u = (
        torch.nn.functional.normalize(torch.randn(B, T, H, DK, generator=gen), dim=-1) for _ in range(3)
    )
    inputs = dict(q=q, k=k, u=u, v=torch.randn(B, T, H, DK, generator=gen))
    inputs["eta"] = 0.2 * torch.rand(B, T, H, generator=gen)
    inputs["alpha"] = 0.8 + 0.2 * torch.rand(B, T, H, generator=gen)
    if memory == "titans":
        inputs["momentum"] = 0.9 * torch.rand(B, T, H, generator=gen)
    params = [0.5 * torch.randn(H, DK, DK, generator=gen)]
    opts = dict(memory=memory, params=params, segment_size=8, chunk_size=4, aggregation="grm")
    clean = memory_caching(**inputs, **opts)
    dirty = memory_caching(**corrupt(inputs, name, math.nan), **opts)
    assert_causal(clean, dirty, name)
