"""Throughput of the ops and layers, side by side with baselines, in one run.

Writes ``<out>/bench_<suite>.json`` (machine, rows), ``<out>/bench_<suite>.md`` (the table) and
``<out>/bench_<suite>.png`` (tokens/s against T, log axes), and prints a table with each case's
speed as a ratio to the baselines measured in the same run. On CUDA the ops suite times the Triton
op (bf16) up to T = 32K; on the CPU every case runs in its own process.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path
from typing import Any

from mcrnn.bench.deep import deep_suite
from mcrnn.bench.report import plot_throughput, ratio_table, save_json, write_atomic
from mcrnn.bench.retrofit import retrofit_suite
from mcrnn.bench.suites import (
    GPU_SEQ_LENS,
    OPS_SEQ_LENS,
    delta_suite,
    ops_suite,
    peer_available,
    peer_suite,
)
from mcrnn.bench.timing import machine_info, merge_rounds, run_isolated
from mcrnn.utils.arguments import ExtendList, list_of, positive_int

SUITES = ("ops", "peer", "deep", "delta", "retrofit")
_DEVICE = re.compile(r"cpu|cuda(:\d+)?")

EXAMPLES = """
  mcrnn bench                                   # ops suite on the CPU
  mcrnn bench --suite deep --rounds 2 --repeats 5
  mcrnn bench --device cuda --seq-lens 8192 32768
  mcrnn bench --suite ops --only base grm sdpa --seq-lens 1024,2048
  mcrnn bench --suite delta --seq-lens 1024,4096,16384 --rounds 3
"""


def device_arg(text: str) -> str:
    """argparse type: ``cpu``, ``cuda`` or ``cuda:N``."""
    if not _DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suite", choices=(*SUITES, "all"), default="ops", help="what to measure")
    parser.add_argument(
        "--seq-lens", action=ExtendList, type=list_of(positive_int), default=None,
        help="sequence lengths of the ops sweep (default: "
        f"{' '.join(map(str, OPS_SEQ_LENS))} on cpu, {' '.join(map(str, GPU_SEQ_LENS))} on cuda)",
    )
    parser.add_argument(
        "--segment-size", type=positive_int, default=256, help="MC segment size of the ops sweep"
    )
    parser.add_argument(
        "--repeats", type=positive_int, default=3, help="timed runs per case (the median is reported)"
    )
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=1,
        help="measure the cases this many times round-robin (a fresh process each) and pool the runs, "
        "so that load drifting on a shared machine hits every case alike",
    )
    parser.add_argument(
        "--threads", type=positive_int, default=None, help="torch threads (default: torch's choice)"
    )
    parser.add_argument(
        "--only", action=ExtendList, type=list_of(str), default=None, metavar="CASE",
        help="measure only these case names (e.g. titans_base)",
    )
    parser.add_argument("--device", type=device_arg, default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="output folder")


def check_device(device: str) -> None:
    """Reject a device this machine cannot run, before any worker starts."""
    if not _DEVICE.fullmatch(device):
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {device!r}")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available on this machine")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise ValueError(f"--device {device}: this machine has {count} CUDA device(s)")


def measure(cases: list[tuple[str, dict[str, Any]]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run every case in its own process, printing progress; return rows with name and T."""
    if args.only:
        names = {name for name, _ in cases}
        unknown = sorted(set(args.only) - names)
        if unknown:
            raise ValueError(f"--only: no case named {unknown}; this suite has {sorted(names)}")
        cases = [(name, case) for name, case in cases if name in args.only]
    cases = [(name, {"repeats": args.repeats, **case}) for name, case in cases]
    if args.threads:
        cases = [(name, {**case, "threads": args.threads}) for name, case in cases]
    results: list[list[dict[str, Any]]] = [[] for _ in cases]
    for round_index in range(args.rounds):
        for index, (name, case) in enumerate(cases):
            start = time.perf_counter()
            result = run_isolated(case)
            took = time.perf_counter() - start
            shown = f"{result['tokens_per_s']:.0f} tok/s" if "error" not in result else result["error"]
            where = f"round {round_index + 1}/{args.rounds} " if args.rounds > 1 else ""
            print(
                f"[{where}{index + 1}/{len(cases)}] {name} T={case['seq_len']}: {shown} ({took:.0f} s)",
                flush=True,
            )
            results[index].append(result)
    return [
        {"name": name, "seq_len": case["seq_len"], "case": case, **merge_rounds(found)}
        for (name, case), found in zip(cases, results, strict=True)
    ]


def peer_summary(rows: list[dict[str, Any]]) -> str:
    """``ours / peer`` speed per aggregation (each measured in this run)."""
    speed = {row["name"]: row.get("tokens_per_s") for row in rows}
    lines = []
    for aggregation in ("residual", "grm", "soup", "ssc"):
        ours, theirs = speed.get(f"mcrnn_{aggregation}"), speed.get(f"peer_{aggregation}")
        if ours and theirs:
            line = f"{aggregation}: mcrnn {ours:.0f} tok/s, peer {theirs:.0f} tok/s, {ours / theirs:.1f}x"
            lines.append(line)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    check_device(args.device)
    suites = SUITES if args.suite == "all" else (args.suite,)
    requested_lens = args.seq_lens
    if args.seq_lens is None:
        args.seq_lens = list(GPU_SEQ_LENS if args.device.startswith("cuda") else OPS_SEQ_LENS)
    machine = machine_info()
    print("machine:", ", ".join(f"{k}={v}" for k, v in machine.items()))
    for suite in suites:
        if suite == "ops" and args.device.startswith("cuda"):
            from mcrnn.bench.gpu import format_table, gpu_benchmark, target_report

            rows = gpu_benchmark(
                seq_lens=tuple(args.seq_lens), device=args.device, repeats=max(args.repeats, 5)
            )
            table = "\n".join([format_table(rows), "", *target_report(rows)])
            _write(
                args.out, suite, machine, rows, table, "MC op (Triton), fwd+bwd, B*T=32K, H=16, D=64, bf16"
            )
            continue
        if suite == "ops":
            cases = ops_suite(
                tuple(args.seq_lens),
                args.segment_size,
                device=args.device,
                dtype="bfloat16" if args.device.startswith("cuda") else "float32",
            )
            baselines: tuple[str, ...] = ("base", "sdpa")
            title = "MC op, forward+backward, B=1 H=4 D=64"
        elif suite == "delta":
            cases = delta_suite(tuple(args.seq_lens), args.segment_size, device=args.device)
            baselines = ("linear_base", "linear_decay_base", "gdn_base", "sdpa")
            title = "MC over the gated delta rule, forward+backward, B=1 H=4 D=64"
        elif suite == "retrofit":
            cases = retrofit_suite(tuple(requested_lens or (4096,)), args.segment_size)
            baselines = ("retrofit_base",)
            title = "Qwen3.5 gated DeltaNet layer (transformers fallback) + MC grm, forward only, B=1"
        elif suite == "deep":
            cases = deep_suite()
            baselines = ("titans_base", "titans_pytorch")
            title = "MC layer over deep memories, hidden 256, 4 heads, chunk 64, segment 256"
        else:
            if not peer_available():
                print(
                    "peer suite: the memory-caching package is not installed (pip install -e '.[bench]'); "
                    "measuring only our layer"
                )
            cases = peer_suite()
            baselines = tuple(f"peer_{a}" for a in ("residual", "grm", "soup", "ssc"))
            title = "MC layer vs memory-caching 0.1.0, d_model 256, 4 heads, segment 64"
        rows = measure(cases, args)
        table = ratio_table(rows, baselines)
        if suite == "peer":
            table += "\n\n" + peer_summary(rows)
        _write(args.out, suite, machine, rows, table, title)
    return 0


def _write(out: Path, suite: str, machine: dict, rows: list[dict[str, Any]], table: str, title: str) -> None:
    """Print the table; write it as markdown, the rows as JSON and the plot, all atomically."""
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    save_json(out / f"bench_{suite}.json", {"suite": suite, "machine": machine, "rows": rows})
    machine_line = ", ".join(f"{k}={v}" for k, v in machine.items())
    write_atomic(out / f"bench_{suite}.md", f"{title}\n\n{machine_line}\n\n```\n{table}\n```\n".encode())
    plot_throughput(rows, out / f"bench_{suite}.png", title)
    print(f"wrote {out / f'bench_{suite}.md'}, .json and .png")
