"""Every benchmark case times forward *and* backward: one step fills the gradients of its inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mcrnn.bench import gpu
from mcrnn.bench.cases import build
from mcrnn.bench.deep import deep_suite
from mcrnn.bench.suites import delta_suite, ops_suite, peer_suite


def _closure_leaves(step) -> tuple[list[torch.Tensor], list[nn.Module]]:  # noqa: ANN001
    """Input tensors that require grad and modules a case's ``step`` closes over."""
    cells = [cell.cell_contents for cell in step.__closure__ or ()]
    tensors = [c for c in cells if isinstance(c, torch.Tensor) and c.requires_grad]
    return tensors, [c for c in cells if isinstance(c, nn.Module)]


CASES = [
    *ops_suite(seq_lens=(24,), segment_size=8, heads=2, head_dim=8),
    *delta_suite(seq_lens=(24,), segment_size=8, heads=2, head_dim=8),
    *peer_suite(seq_len=16, segment_size=8),
    *deep_suite(seq_lens=(16,), hidden_size=16, heads=2, chunk_size=4, segment_size=8),
]


def _closure_gates(step) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """The gate tensors a case's ``step`` passes to the op by name (a dict in its closure)."""
    cells = [cell.cell_contents for cell in step.__closure__ or ()]
    return {k: v for c in cells if isinstance(c, dict) for k, v in c.items() if isinstance(v, torch.Tensor)}


GATED = [(name, case) for name, case in CASES if case.get("gates")]


@pytest.mark.parametrize("name,case", GATED, ids=[name for name, _ in GATED])
def test_every_gate_receives_a_gradient_in_the_timed_step(name: str, case: dict) -> None:
    """The gates (``log_decay``, ``beta``) are inputs of the op like q, k, v: a step that detached them
    (or built them without ``requires_grad``) would time a backward without their gradients."""
    step, _ = build(case)
    gates = _closure_gates(step)
    assert sorted(gates) == sorted(case["gates"]), (name, sorted(gates))
    step()
    for gate_name, gate in gates.items():
        assert gate.grad is not None, f"{name}: {gate_name} got no gradient"
        assert bool(gate.grad.isfinite().all()) and bool(gate.grad.abs().sum() > 0), f"{name}: {gate_name}"


def test_gated_cases_cover_every_gate() -> None:
    """The suites above time both gates (a suite that lost them would make the gate test vacuous)."""
    assert {gate for _, case in GATED for gate in case["gates"]} == {"log_decay", "beta"}


@pytest.mark.parametrize("name,case", CASES, ids=[name for name, _ in CASES])
def test_case_step_fills_input_gradients(name: str, case: dict) -> None:
    step, _ = build(case)
    inputs, modules = _closure_leaves(step)
    assert inputs, f"{name}: the step closes over no input that requires grad"
    step()
    for x in inputs:
        assert x.grad is not None and bool(x.grad.isfinite().all()) and bool(x.grad.abs().sum() > 0), name
    options = case.get("options") or {}
    no_router = options.get("aggregation") in ("residual", "average") or (
        options.get("segment_size") is None and options.get("segmentation") != "log"
    )
    unread = {"u_proj.weight"} if no_router else set()  # the router query of a layer that reads none
    for module in modules:  # every other trained weight, the gate projections included
        idle = {n for n, p in module.named_parameters() if p.grad is None or not bool(p.grad.any())}
        assert idle <= unread, f"{name}: no gradient for {sorted(idle - unread)}"


def test_gpu_benchmark_cases_fill_input_gradients(monkeypatch) -> None:  # noqa: ANN001
    """``mcrnn.bench.gpu`` (tiny, CPU, Triton interpreted): each timed step back-propagates into q, k, v."""
    pytest.importorskip("triton", reason="the GPU benchmark's MC cases run the Triton backend")
    filled: list[bool] = []

    def run_once(step, repeats, warmup, sync=False):  # noqa: ANN001, ANN202
        step()  # partial(_fwd_bwd, forward, q, k, v, u, grad)
        filled.append(all(x.grad is not None and bool(x.grad.abs().sum() > 0) for x in step.args[1:4]))
        return [1.0]

    monkeypatch.setattr(gpu, "timed_runs", run_once)
    rows = gpu.gpu_benchmark(
        seq_lens=(16,),
        tokens=16,
        heads=1,
        head_dim=16,
        segment=8,
        top_ks=(1,),
        dtype=torch.float32,
        device="cpu",
        repeats=1,
        warmup=0,
    )
    assert all("error" not in row for row in rows), rows
    assert len(filled) == len(rows) == 5 and all(filled), filled
