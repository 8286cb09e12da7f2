"""``pooling="sum"`` on every path (parallel, decode, log segments, deep memories, Triton) against the
token-loop definition with the same pooling; each case also checks that sum differs from mean, so a
path that ignores the option fails."""

from __future__ import annotations

import pytest
import torch
from op_inputs import mc_flat

from mcrnn.ops.deep import layer_shapes
from mcrnn.ops.linear import triton as mc_triton

TOL = dict(atol=1e-10, rtol=1e-10)
B, T, H, D = 2, 13, 2, 4


def matrix_inputs(seed: int = 0, dtype: torch.dtype = torch.float64, dim: int = D) -> dict:
    gen = torch.Generator().manual_seed(seed)
    q, k, v, u = (torch.randn(B, T, H, dim, generator=gen, dtype=dtype) for _ in range(4))
    log_decay = -0.5 * torch.rand(B, T, H, generator=gen, dtype=dtype)
    return dict(q=q, k=k, v=v, u=u, log_decay=log_decay)


def deep_inputs(memory: str, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    q, k, u = (torch.nn.functional.normalize(rand(B, T, H, D), dim=-1) for _ in range(3))
    return dict(
        q=q, k=k, v=rand(B, T, H, D), u=u, memory=memory,
        params=[0.5 * rand(H, o, i) for o, i in layer_shapes(D, D, 2, 2)],
        eta=0.2 * torch.rand(B, T, H, generator=gen, dtype=torch.float64),
        alpha=0.8 + 0.2 * torch.rand(B, T, H, generator=gen, dtype=torch.float64),
        momentum=(
            0.9 * torch.rand(B, T, H, generator=gen, dtype=torch.float64) if memory == "titans" else None
        ),
    )


def decode(inputs: dict, prefill: int, **options) -> torch.Tensor:
    """A parallel prefill of ``prefill`` tokens, then one token at a time from the cache."""
    per_token = {n for n, x in inputs.items() if isinstance(x, torch.Tensor) and x.dim() >= 3}

    def part(sl: slice) -> dict:
        return {n: x[:, sl] if n in per_token else x for n, x in inputs.items()}

    out, cache = mc_flat(**part(slice(0, prefill)), output_cache=True, **options)
    outputs = [out]
    for t in range(prefill, T):
        out, cache = mc_flat(**part(slice(t, t + 1)), cache=cache, output_cache=True, **options)
        outputs.append(out)
    return torch.cat(outputs, 1)


def assert_sum_path(run, reference) -> None:  # noqa: ANN001
    """``run(pooling)`` equals ``reference(pooling)`` for sum, and sum differs from mean."""
    got = run("sum")
    torch.testing.assert_close(got, reference("sum"), **TOL)
    assert not torch.allclose(got, run("mean"), atol=1e-6)


MATRIX = [
    ("linear", "grm", "checkpoint"),
    ("linear", "ssc", "independent"),
    ("swla", "grm", "independent"),
    ("swla", "ssc", "checkpoint"),
]


@pytest.mark.parametrize("memory,aggregation,init", MATRIX)
@pytest.mark.parametrize("path", ["parallel", "decode"])
def test_matrix_memories(memory: str, aggregation: str, init: str, path: str) -> None:
    inputs = matrix_inputs()
    if memory == "swla":
        gen = torch.Generator().manual_seed(1)
        inputs.update(
            {g: torch.rand(B, T, H, generator=gen, dtype=torch.float64) for g in ("prev_gate", "cur_gate")}
        )
    options = dict(segment_size=3, memory=memory, aggregation=aggregation, init=init, top_k=1)

    def run(pooling: str) -> torch.Tensor:
        if path == "decode":
            return decode(inputs, 4, pooling=pooling, **options)
        return mc_flat(**inputs, pooling=pooling, backend="torch", chunk_size=2, **options)

    assert_sum_path(
        run, lambda pooling: mc_flat(**inputs, pooling=pooling, backend="naive", **options)
    )


@pytest.mark.parametrize("aggregation", ["grm", "ssc"])
@pytest.mark.parametrize("path", ["parallel", "decode"])
def test_log_segments(aggregation: str, path: str) -> None:
    inputs = matrix_inputs(seed=2)
    options = dict(segmentation="log", aggregation=aggregation, top_k=1)

    def run(pooling: str) -> torch.Tensor:
        if path == "decode":
            return decode(inputs, 5, pooling=pooling, **options)
        return mc_flat(**inputs, pooling=pooling, backend="torch", chunk_size=2, **options)

    assert_sum_path(
        run, lambda pooling: mc_flat(**inputs, pooling=pooling, backend="naive", **options)
    )


@pytest.mark.parametrize("memory,aggregation", [("dla", "grm"), ("titans", "soup"), ("titans", "ssc")])
@pytest.mark.parametrize("path", ["parallel", "decode"])
def test_deep_memories(memory: str, aggregation: str, path: str) -> None:
    inputs = deep_inputs(memory)
    options = dict(segment_size=4, chunk_size=2, aggregation=aggregation, top_k=1)

    def run(pooling: str) -> torch.Tensor:
        if path == "decode":
            return decode(inputs, 5, pooling=pooling, **options)
        return mc_flat(**inputs, pooling=pooling, **options)

    assert_sum_path(
        run, lambda pooling: mc_flat(**inputs, pooling=pooling, backend="naive", **options)
    )


TRITON_REASON = mc_triton.unsupported_reason(torch.zeros(1), head_dims=(16,))


@pytest.mark.skipif(TRITON_REASON is not None, reason=f"Triton kernels cannot run: {TRITON_REASON}")
@pytest.mark.parametrize("aggregation", ["grm", "ssc"])
def test_triton(aggregation: str) -> None:
    """float32 Triton (interpreted on the CPU) against the float64 definition of the same inputs.
    Measured max error / max |output|: 2.6e-7 .. 4.6e-7 (seeds 0-2, this VM); bound 2e-6."""
    inputs = matrix_inputs(seed=3, dtype=torch.float32, dim=16)
    options = dict(segment_size=4, aggregation=aggregation, top_k=1)

    def run(pooling: str) -> torch.Tensor:
        return mc_flat(**inputs, pooling=pooling, backend="triton", **options).double()

    wide = {n: x.double() for n, x in inputs.items()}
    expected = mc_flat(**wide, pooling="sum", backend="naive", **options)
    got = run("sum")
    assert (got - expected).abs().max() <= 2e-6 * expected.abs().max()
    assert not torch.allclose(got, run("mean"), atol=1e-3)
