"""Timing primitives: medians of forward+backward runs, the machine's facts, and isolated workers.

Every benchmark case runs in a fresh Python process (``python -m mcrnn.bench.worker``) so that its
peak memory can be read from the kernel (``VmHWM`` minus the resident size once the inputs exist)
and one case's allocator state cannot slow the next.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def timed_runs(step: Callable[[], None], repeats: int, warmup: int = 1, sync: bool = False) -> list[float]:
    """Run ``step`` ``warmup`` times untimed, then ``repeats`` times; return each timed run (seconds)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        if sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if sync:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def memory_status_kib(field: str) -> int:
    """A field (``VmRSS``, ``VmHWM``) of /proc/self/status in KiB; 0 where /proc is absent."""
    status = Path("/proc/self/status")
    if not status.exists():
        return 0
    for line in status.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if "model name" in ln]
        cpu = names[0] if names else cpu
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def run_isolated(spec: dict[str, Any], timeout: float = 1800.0) -> dict[str, Any]:
    """Run one case (see :mod:`mcrnn.bench.worker`) in a fresh process and return its JSON result.

    A case that fails returns ``{"error": ...}`` instead of raising, so a sweep reports what it could.
    The worker inherits the environment, ``OMP_WAIT_POLICY`` included: run benchmarks alone with the
    OpenMP default (what users get); ``PASSIVE`` only when other work shares the cores, since waking
    sleeping threads costs every small op tens of microseconds (it is recorded in the machine info).
    """
    env = dict(os.environ)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "mcrnn.bench.worker", json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["worker failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarise(times: list[float], tokens: int) -> dict[str, float]:
    """Median / min / max seconds and tokens per second at the median."""
    median = statistics.median(times)
    return {"median_s": median, "min_s": min(times), "max_s": max(times), "tokens_per_s": tokens / median}


def merge_rounds(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One case measured in several rounds (worker results): the pooled timed runs' summary and the
    largest peak memory; the first error if any round failed."""
    errors = [r for r in results if "error" in r]
    if errors:
        return errors[0]
    times = [t for r in results for t in r["times_s"]]
    merged = summarise(times, results[0]["tokens"])
    merged["peak_mib"] = max(r["peak_mib"] for r in results)
    merged["times_s"] = times
    return merged
