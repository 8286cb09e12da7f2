"""Smoke test of the GPU benchmark (``mcrnn.bench.gpu``) at tiny size through Triton's interpreter."""

from __future__ import annotations

import pytest
import torch
from triton_kernels import require_triton_kernels

triton = require_triton_kernels()  # before any import of mcrnn's kernels

from mcrnn.bench.gpu import flops_per_token, format_table, gpu_benchmark, target_report  # noqa: E402


def test_tiny_sweep_on_cpu():
    rows = gpu_benchmark(seq_lens=(32,), tokens=32, heads=1, head_dim=16, segment=8, top_ks=(2,),
                         dtype=torch.float32, device="cpu", repeats=1, warmup=0)
    assert [r["name"] for r in rows] == ["base", "residual", "grm", "ssc_k2", "sdpa"]
    assert all("error" not in r and r["tokens_per_s"] > 0 and r["tflops"] > 0 for r in rows), rows
    table = format_table(rows)
    assert "grm" in table and "32" in table
    report = target_report(rows)
    assert any("not measured" in line for line in report)  # no fla, no 16K/32K rows here


def test_flop_model():
    """DESIGN.md §8: grm at C=256 reads (N-1)/2 states on average; ssc at most k."""
    d, t = 64, 4096
    lengths = [256] * 16
    base = 4 * 64 * d + 4 * d * d
    assert flops_per_token("sdpa", t, d, [t], None) == 2 * t * d
    assert flops_per_token("base", t, d, [t], None) == base
    assert flops_per_token("grm", t, d, lengths, None) == pytest.approx(base + 2 * d * d * 7.5)
    assert flops_per_token("ssc_k4", t, d, lengths, 4) < base + 2 * d * d * 4
