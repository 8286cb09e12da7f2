"""The benchmark harness: every case kind builds and steps, workers report, outputs are written."""

from __future__ import annotations

import json

import pytest

from mcrnn.bench.cases import build
from mcrnn.bench.report import plot_throughput, ratio_table, save_json
from mcrnn.bench.suites import delta_suite, ops_suite, peer_available, peer_suite
from mcrnn.bench.timing import run_isolated, summarise, timed_runs


@pytest.mark.parametrize("name,case", ops_suite(seq_lens=(40,), segment_size=16, heads=2, head_dim=8))
def test_ops_cases_step(name, case):
    step, tokens = build(case)
    step()
    assert tokens == 40


@pytest.mark.parametrize("name,case", delta_suite(seq_lens=(40,), segment_size=16, heads=2, head_dim=8))
def test_delta_cases_step(name, case):
    """Every case of the delta suite builds and steps; gla/kda get a log decay per key channel."""
    step, tokens = build(case)
    step()
    assert tokens == 40


def test_unknown_gate_in_a_case():
    case = {**delta_suite(seq_lens=(8,), heads=1, head_dim=4)[0][1], "gates": ["eta"]}
    with pytest.raises(ValueError, match="unknown gate 'eta'"):
        build(case)


def test_layer_case_steps():
    name, case = peer_suite(seq_len=32, segment_size=8)[0]
    step, tokens = build(case)
    step()
    assert name == "mcrnn_residual" and tokens == 32


@pytest.mark.skipif(not peer_available(), reason="memory-caching (bench extra) not installed")
def test_peer_case_steps():
    case = next(c for n, c in peer_suite(seq_len=8, segment_size=4) if n == "peer_grm")
    step, _ = build(case)
    step()


def test_unknown_case_kind():
    with pytest.raises(ValueError, match="unknown case kind"):
        build({"kind": "rnn", "seq_len": 4})


def test_timed_runs_counts_and_summary():
    calls = []
    times = timed_runs(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(times) == 3 and len(calls) == 5
    summary = summarise([1.0, 3.0, 2.0], tokens=100)
    assert summary["median_s"] == 2.0 and summary["tokens_per_s"] == 50.0


def test_worker_reports_time_and_memory():
    _, case = ops_suite(seq_lens=(64,), segment_size=16, heads=2, head_dim=8)[2]
    result = run_isolated({**case, "repeats": 2, "threads": 1})
    assert result["tokens_per_s"] > 0 and len(result["times_s"]) == 2 and result["peak_mib"] >= 0
    assert "error" in run_isolated({"kind": "nope", "seq_len": 1})


def test_report_outputs(tmp_path):
    rows = [
        {"name": "base", "seq_len": 64, "tokens_per_s": 100.0, "median_s": 0.64, "peak_mib": 1.0},
        {"name": "grm", "seq_len": 64, "tokens_per_s": 50.0, "median_s": 1.28, "peak_mib": 2.0},
        {"name": "grm", "seq_len": 128, "error": "boom"},
    ]
    table = ratio_table(rows, ("base",))
    assert "0.50" in table and "error: boom" in table
    save_json(tmp_path / "b.json", {"rows": rows})
    assert json.loads((tmp_path / "b.json").read_text())["rows"][1]["name"] == "grm"
    plot_throughput(rows, tmp_path / "b.png", "t")
    assert (tmp_path / "b.png").stat().st_size > 0


def test_deep_suite_cases_step():
    from mcrnn.bench.deep import deep_suite, titans_pytorch_available

    cases = deep_suite(seq_lens=(16,), hidden_size=16, heads=2, chunk_size=4, segment_size=8)
    names = [name for name, _ in cases]
    assert "titans_grm" in names and "dla_ssc_k2" in names
    assert ("titans_pytorch" in names) == titans_pytorch_available()
    for name, case in cases:
        if name in ("titans_ssc_k2", "titans_pytorch"):
            step, tokens = build(case)
            step()
            assert tokens == 16


def test_only_selects_cases_and_rounds_pool_the_runs(monkeypatch):
    import argparse

    from mcrnn.bench import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    seen = []

    def fake_run(case):
        seen.append(case["seq_len"])
        times = [0.1 * len(seen), 0.2 * len(seen)]
        return {"times_s": times, "tokens": 10, "peak_mib": float(len(seen)), "tokens_per_s": 1.0}

    monkeypatch.setattr(cli, "run_isolated", fake_run)
    cases = [("a", {"seq_len": 1}), ("b", {"seq_len": 2}), ("c", {"seq_len": 3})]
    rows = cli.measure(cases, parser.parse_args(["--only", "c", "a", "--rounds", "2"]))
    assert [row["name"] for row in rows] == ["a", "c"] and seen == [1, 3, 1, 3]  # round-robin
    first = rows[0]  # runs 1 and 3 of the fake: times 0.1, 0.2, 0.3, 0.6
    assert first["times_s"] == pytest.approx([0.1, 0.2, 0.3, 0.6])
    assert first["median_s"] == pytest.approx(0.25) and first["tokens_per_s"] == pytest.approx(40.0)
    assert first["peak_mib"] == 3.0
    with pytest.raises(ValueError, match="no case named"):
        cli.measure(cases, parser.parse_args(["--only", "zz"]))
