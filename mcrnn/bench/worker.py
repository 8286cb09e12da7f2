"""Run one benchmark case in this process and print its result as one JSON line.

``python -m mcrnn.bench.worker '{"kind": "op", "seq_len": 4096, ...}'``; see :mod:`mcrnn.bench.cases`.
Peak memory is ``VmHWM`` (the process's peak resident size) minus ``VmRSS`` once the inputs exist,
so it counts what the forward and backward passes hold, not the interpreter or the inputs; on CUDA it
is ``torch.cuda.max_memory_allocated`` over the allocation before the first step.
"""

from __future__ import annotations

import json
import sys

import torch

from mcrnn.bench.cases import build
from mcrnn.bench.timing import memory_status_kib, summarise, timed_runs


def main(argv: list[str]) -> None:
    case = json.loads(argv[0])
    if "threads" in case:
        torch.set_num_threads(int(case["threads"]))
    cuda = case.get("device", "cpu").startswith("cuda")
    step, tokens = build(case)
    if cuda:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        before = memory_status_kib("VmRSS") * 1024
    repeats, warmup = int(case.get("repeats", 3)), int(case.get("warmup", 1))
    times = timed_runs(step, repeats=repeats, warmup=warmup, sync=cuda)
    peak = torch.cuda.max_memory_allocated() if cuda else memory_status_kib("VmHWM") * 1024
    result = summarise(times, tokens)
    result["peak_mib"] = max(peak - before, 0) / 2**20
    result["times_s"] = times
    result["tokens"] = tokens
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
