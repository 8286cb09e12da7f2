"""One cache protocol for every family: the spec inside, [B, N, H, ...], no mutation, reorder."""

from __future__ import annotations

from dataclasses import fields

import pytest
import torch

from mcrnn.layers import MemoryCachingAttention
from mcrnn.ops import DeepMemoryCache, FenwickMemoryCache, MatrixMemoryCache, memory_caching
from mcrnn.ops.deep import layer_shapes
from mcrnn.ops.memories import memory_inputs

B, T, H, D = 3, 11, 2, 4
CASES = {
    "linear-grm": ({"memory": "linear", "segment_size": 4}, MatrixMemoryCache),
    "swla-ssc": ({"memory": "swla", "segment_size": 3, "aggregation": "ssc", "top_k": 1}, MatrixMemoryCache),
    "log-grm": ({"memory": "linear", "segmentation": "log", "pooling": "sum"}, FenwickMemoryCache),
    "dla-grm": ({"memory": "dla", "segment_size": 4, "chunk_size": 2}, DeepMemoryCache),
    "titans-soup": (
        {
            "memory": "titans",
            "segment_size": 4,
            "chunk_size": 2,
            "aggregation": "soup",
            "init": "independent",
        },
        DeepMemoryCache,
    ),
}


def _inputs(memory: str, seq_len: int) -> dict:
    gen = torch.Generator().manual_seed(1)
    q, k, v, u = (torch.randn(B, seq_len, H, D, generator=gen, dtype=torch.float64) for _ in range(4))
    gates = lambda: torch.rand(B, seq_len, H, generator=gen, dtype=torch.float64)  # noqa: E731
    inputs = {"q": q, "k": k, "v": v, "u": u}
    if memory in ("linear", "swla"):
        inputs["log_decay"] = -0.1 * gates()
    if memory == "swla":
        inputs.update(prev_gate=gates(), cur_gate=gates())
    if memory in ("dla", "titans"):
        inputs.update(eta=0.1 * gates(), alpha=0.9 + 0.1 * gates())
        if memory == "titans":
            inputs["momentum"] = gates()
    return inputs


def _params(memory: str) -> dict:
    if memory not in ("dla", "titans"):
        return {}
    gen = torch.Generator().manual_seed(2)
    return {"params": [0.3 * torch.randn(H, o, i, generator=gen, dtype=torch.float64)
                       for o, i in layer_shapes(D, D, 2, 2)]}


def _mc(inputs: dict, params: dict, **options: object) -> object:
    """``memory_caching`` on a dict of q, k, v, u and the family's tensors, those (with ``params``) grouped
    into ``memory=<dataclass>`` of the family named by ``options["memory"]`` (default ``linear``)."""
    qkvu = {name: x for name, x in inputs.items() if name in ("q", "k", "v", "u")}
    tensors = {name: x for name, x in inputs.items() if name not in qkvu}
    memory = memory_inputs(options.pop("memory", "linear"), **tensors, **params)
    return memory_caching(**qkvu, memory=memory, **options)


def _split(inputs: dict, start: int, stop: int, rows: list[int] | None = None) -> dict:
    out = {name: x[:, start:stop] for name, x in inputs.items()}
    return out if rows is None else {name: x[rows] for name, x in out.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_cache_carries_the_spec_layout_and_reorders(name: str) -> None:
    options, cache_type = CASES[name]
    memory = options["memory"]
    inputs, params = _inputs(memory, T + 3), _params(memory)
    spec_options = {n: v for n, v in options.items() if n != "memory"}
    full = _mc(inputs, params, **options)
    prefix, cache = _mc(_split(inputs, 0, T), params, **options, output_cache=True)
    assert isinstance(cache, cache_type) and cache.position == T and cache.batch_size == B
    assert cache.spec.aggregation == options.get("aggregation", "grm")
    if cache_type is not DeepMemoryCache:  # cached states are [B, N, H, Dk, Dv]
        assert cache.cached.shape[0] == B and tuple(cache.cached.shape[2:]) == (H, D, D)
    # decoding needs no spec again; passing the same spec is fine, the cache is not modified
    rest, after = _mc(_split(inputs, T, T + 3), params, memory=memory, cache=cache, output_cache=True)
    assert cache.position == T and after.position == T + 3
    again = _mc(_split(inputs, T, T + 3), params, **spec_options, memory=memory, cache=cache)
    torch.testing.assert_close(again, rest, rtol=0, atol=0)
    torch.testing.assert_close(torch.cat([prefix, rest], 1), full, rtol=1e-10, atol=1e-10)
    # reorder: rows [2, 0] of the cache continue exactly as rows [2, 0] of the stream
    rows = [2, 0]
    picked = cache.reorder(torch.tensor(rows))
    assert picked.batch_size == 2 and picked.spec == cache.spec
    out = _mc(_split(inputs, T, T + 3, rows), params, memory=memory, cache=picked)
    torch.testing.assert_close(out, full[rows, T:], rtol=1e-10, atol=1e-10)
    beams = cache.reorder(torch.tensor([1, 1, 0]))  # beam search repeats rows
    out = _mc(_split(inputs, T, T + 3, [1, 1, 0]), params, memory=memory, cache=beams)
    torch.testing.assert_close(out, full[[1, 1, 0], T:], rtol=1e-10, atol=1e-10)


def test_cache_mismatches_are_errors() -> None:
    inputs = _inputs("linear", T)
    _, cache = _mc(inputs, {}, segment_size=4, output_cache=True)
    step = _split(inputs, 0, 1)
    with pytest.raises(ValueError, match=r"segment_size=8 \(cache: 4\)"):
        _mc(step, {}, segment_size=8, cache=cache)
    deep_inputs = _inputs("dla", T)
    _, deep_cache = _mc(deep_inputs, _params("dla"), memory="dla", segment_size=4, output_cache=True)
    with pytest.raises(
        TypeError, match="cache must be a MatrixMemoryCache for memory='linear', got DeepMemoryCache"
    ):
        _mc(step, {}, cache=deep_cache)
    with pytest.raises(
        ValueError, match=r"built for \(B, H, Dk, Dv\)=\(3, 2, 4, 4\), the inputs are \(2, 2, 4, 4\)"
    ):
        _mc(_split(inputs, 0, 1, [0, 1]), {}, cache=cache)
    swla = {**step, "prev_gate": step["log_decay"].neg(), "cur_gate": step["log_decay"].neg()}
    with pytest.raises(ValueError, match="the cache is for memory='linear', the call for memory='swla'"):
        _mc(swla, {}, memory="swla", cache=cache)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 3\)"):
        cache.reorder(torch.tensor([3]))


def test_layer_cache_reorders_conv_buffers_too() -> None:
    torch.manual_seed(0)
    layer = MemoryCachingAttention(8, 2, segment_size=3, aggregation="grm").double()
    x = torch.randn(3, 9, 8, dtype=torch.float64)
    full, _ = layer(x)
    _, cache = layer(x[:, :7], use_cache=True)
    picked = cache.reorder(torch.tensor([2, 1]))
    assert picked.conv["q"].shape[0] == 2
    rest, _ = layer(x[[2, 1], 7:], cache=picked, use_cache=True)
    torch.testing.assert_close(rest, full[[2, 1], 7:], rtol=1e-10, atol=1e-10)


LOW_PRECISION = {
    **CASES,
    "swla-log": ({"memory": "swla", "segmentation": "log"}, FenwickMemoryCache),
    "gated_deltanet-grm": ({"memory": "gated_deltanet", "segment_size": 4}, MatrixMemoryCache),
    "deltanet-log": ({"memory": "deltanet", "segmentation": "log"}, FenwickMemoryCache),
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", list(LOW_PRECISION))
def test_low_precision_decode_accumulates_in_float32(name: str, dtype: torch.dtype) -> None:
    """A bf16/fp16 prefill and decode keep float32 states and return the inputs' dtype; the outputs equal
    the float64 run on the same (rounded) inputs up to the output's rounding: |diff| <= 2 eps(dtype)
    max|o| (measured at most 0.42 eps max|o|: one rounding of the float32 result)."""
    options, cache_type = LOW_PRECISION[name]
    memory = options["memory"]
    inputs = _inputs(memory if memory in ("swla", "dla", "titans") else "linear", T + 3)
    if memory in ("deltanet", "gated_deltanet"):
        inputs["beta"] = inputs.pop("log_decay").neg() * 10
        if memory == "gated_deltanet":
            inputs["log_decay"] = -0.1 * inputs["beta"]
    low = {name: x.to(dtype) for name, x in inputs.items()}
    params = {name: [p.to(dtype) for p in ps] for name, ps in _params(memory).items()}
    exact = _mc(
        {name: x.double() for name, x in low.items()},
        {name: [p.double() for p in ps] for name, ps in params.items()},
        **options,
    )
    prefix, cache = _mc(_split(low, 0, T), params, **options, output_cache=True)
    assert isinstance(cache, cache_type) and prefix.dtype == dtype
    rest, after = _mc(_split(low, T, T + 3), params, memory=memory, cache=cache, output_cache=True)
    assert rest.dtype == dtype
    assert _floating_dtypes(after) == {torch.float32}
    # a cache held in the low dtype (a user's cast) still decodes in float32
    again, after = _mc(
        _split(low, T, T + 3), params, memory=memory, cache=cache.to_dtype(dtype), output_cache=True
    )
    assert _floating_dtypes(after) == {torch.float32}
    torch.testing.assert_close(again, rest, rtol=0, atol=4 * torch.finfo(dtype).eps * rest.abs().max())
    out = torch.cat([prefix, rest], 1).double()
    bound = 2 * torch.finfo(dtype).eps * exact.abs().max()
    assert (out - exact).abs().max() <= bound


def _floating_dtypes(cache: object) -> set[torch.dtype]:
    """The dtypes of every floating tensor a cache holds (lists recursed)."""
    found, todo = set(), [getattr(cache, f.name) for f in fields(cache)]
    while todo:
        value = todo.pop()
        if isinstance(value, list):
            todo.extend(value)
        elif isinstance(value, torch.Tensor) and value.is_floating_point():
            found.add(value.dtype)
    return found
