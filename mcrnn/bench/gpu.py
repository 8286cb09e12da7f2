"""GPU throughput of the Triton MC op next to causal SDPA and fla's ``chunk_linear_attn`` (issue 5).

:func:`gpu_benchmark` sweeps T with ``B * T`` fixed (32K tokens), H=16, D=64, bf16, and times
forward+backward of the token mixer only:

- ``base``: the Triton chunked linear attention, one segment (MC off);
- ``residual``, ``grm`` (segments of C=256), ``ssc_k2``, ``ssc_k4``: the MC op composed from the
  Triton kernels as the dispatcher composes it: ``chunk_linear``, then ``grm_read`` (router
  softmax fused) for grm, or router gates in PyTorch and ``cached_read`` / ``ssc_read``;
- ``sdpa``: ``scaled_dot_product_attention(is_causal=True)`` (FlashAttention on an H100);
- ``fla``: ``fla.ops.linear_attn.chunk_linear_attn`` (no normalisation) when fla is installed.

Achieved TFLOP/s use the flop model of DESIGN.md §8, per head and token of the forward pass:
``2*T*D`` for causal attention, ``4*c*D + 4*D^2`` for chunked linear attention (inner chunk c=64),
plus ``2*D^2`` per cached state read (``residual``/``grm`` read every earlier segment, ``ssc`` at
most k); forward+backward counts 3x the forward. Runs on the CPU too (tiny sizes, Triton
interpreter, ``TRITON_INTERPRET=1``) as a smoke test.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from mcrnn.bench.suites import GPU_SEQ_LENS
from mcrnn.bench.timing import timed_runs
from mcrnn.ops import MCSpec, memory_caching
from mcrnn.ops.read.segments import segment_index

INNER_CHUNK = 64
FWD_BWD = 3.0


def mc_forward(q, k, v, u, lengths: Sequence[int], aggregation: str, top_k: int | None) -> torch.Tensor:
    """MC output [B, T, H, Dv] through the op's Triton backend (``init="checkpoint"``, mean pooling,
    no decay): ``chunk_linear``, then ``grm_read`` (router softmax fused) for grm, or router gates in
    PyTorch and ``cached_read`` / ``ssc_read``."""
    return memory_caching(q, k, v, u, segment_lengths=lengths, aggregation=aggregation, top_k=top_k,
                          backend="triton")


def flops_per_token(
    name: str, seq_len: int, head_dim: int, lengths: Sequence[int], top_k: int | None
) -> float:
    """Forward flops per head and token (DESIGN.md §8)."""
    if name == "sdpa":
        return 2.0 * seq_len * head_dim
    base = 4.0 * INNER_CHUNK * head_dim + 4.0 * head_dim**2
    if len(lengths) == 1:
        return base
    reads = segment_index(lengths).double()  # states read by each token: s(t), or min(k, s(t))
    if top_k is not None:
        reads = reads.clamp(max=top_k)
    return base + 2.0 * head_dim**2 * float(reads.mean())


def _fla_step() -> Callable | None:
    """fla's ``chunk_linear_attn`` on [B, T, H, D] inputs, or None when fla is not installed."""
    try:
        from fla.ops.linear_attn import chunk_linear_attn
    except ImportError:
        return None

    def step(q, k, v, u):
        try:
            return chunk_linear_attn(q, k, v, normalize=False, head_first=False)[0]
        except TypeError:  # fla versions without head_first take [B, T, H, D] only
            return chunk_linear_attn(q, k, v, normalize=False)[0]

    return step


def _cases(seq_len: int, segment: int, top_ks: Sequence[int]) -> list[tuple[str, list[int], str, int | None]]:
    """(name, segment lengths, aggregation, top_k) of the MC variants at ``seq_len``."""
    segmented = MCSpec(segment_size=segment).lengths(seq_len)
    cases = [("base", [seq_len], "grm", None), ("residual", segmented, "residual", None)]
    cases.append(("grm", segmented, "grm", None))
    cases += [(f"ssc_k{k}", segmented, "ssc", k) for k in top_ks]
    return cases


def gpu_benchmark(
    seq_lens: Sequence[int] = GPU_SEQ_LENS,
    tokens: int = 32768,
    heads: int = 16,
    head_dim: int = 64,
    segment: int = 256,
    top_ks: Sequence[int] = (2, 4),
    dtype: torch.dtype = torch.bfloat16,
    device: str = "cuda",
    repeats: int = 10,
    warmup: int = 3,
) -> list[dict[str, Any]]:
    """Forward+backward throughput of every case at every T (``B = tokens // T``), one row each.

    Rows: ``name, seq_len, batch, heads, head_dim, dtype, device, median_s, tokens_per_s, tflops,
    peak_mib`` (peak CUDA memory of the case, 0 elsewhere; the keys of :mod:`mcrnn.bench.report`),
    or ``error`` instead of the timings when a case fails (out of memory, fla refusing a GPU, ...).
    """
    cuda = torch.device(device).type == "cuda"
    fla = _fla_step() if cuda else None
    rows = []
    for seq_len in seq_lens:
        batch = max(tokens // seq_len, 1)
        inputs = _inputs(batch, seq_len, heads, head_dim, dtype, device)
        steps = [
            (name, partial(mc_forward, lengths=ln, aggregation=a, top_k=tk), ln, tk)
            for name, ln, a, tk in _cases(seq_len, segment, top_ks)
        ]
        steps.append(("sdpa", _sdpa, [seq_len], None))
        if fla is not None:
            steps.append(("fla", fla, [seq_len], None))
        for name, forward, lengths, top_k in steps:
            row = {"name": name, "seq_len": seq_len, "batch": batch, "heads": heads, "head_dim": head_dim,
                   "dtype": str(dtype).removeprefix("torch."), "device": device}
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            try:
                step = partial(_fwd_bwd, forward, *inputs)
                seconds = statistics.median(timed_runs(step, repeats, warmup, sync=cuda))
            except (RuntimeError, ValueError, AssertionError) as err:  # OOM, fla's Hopper guard, ...
                rows.append({**row, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"})
                if cuda:
                    torch.cuda.empty_cache()
                continue
            per_token = flops_per_token(name, seq_len, head_dim, lengths, top_k)
            flops = FWD_BWD * batch * seq_len * heads * per_token
            peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else 0.0
            rows.append({**row, "median_s": seconds, "tokens_per_s": batch * seq_len / seconds,
                         "tflops": flops / seconds / 1e12, "peak_mib": peak})
        del inputs
        if cuda:
            torch.cuda.empty_cache()
    return rows


def _inputs(batch: int, seq_len: int, heads: int, head_dim: int, dtype: torch.dtype, device: str):
    """Leaf ``q, k, v, u`` [B, T, H, D] (q, k, u scaled by 1/sqrt(D)) and an output gradient."""
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (batch, seq_len, heads, head_dim)
    scales = (head_dim**-0.5, head_dim**-0.5, 1.0, head_dim**-0.5)
    draws = [torch.randn(shape, generator=gen, device=device) for _ in range(5)]
    leaves = [(x * s).to(dtype).requires_grad_() for x, s in zip(draws, scales, strict=False)]
    return (*leaves, draws[-1].to(dtype))


def _fwd_bwd(forward: Callable, q, k, v, u, grad) -> None:
    """One training step of the token mixer: forward, then backward of ``<out, grad>``."""
    for x in (q, k, v, u):
        x.grad = None
    forward(q, k, v, u).backward(grad)


def _sdpa(q, k, v, u) -> torch.Tensor:
    """Causal softmax attention on [B, T, H, D] through PyTorch's fused kernels."""
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)


TARGETS = (
    # (case, reference, T or None for every T, minimum speed ratio) from issue 5
    ("grm", "sdpa", 16384, 2.0),
    ("grm", "sdpa", 32768, 3.0),
    ("ssc_k4", "fla", 32768, 0.6),
    ("base", "fla", None, 0.8),
)


def target_report(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One line per issue-5 target: measured ratio, the bar, met or missed (or why not measured)."""
    speed = {(r["name"], r["seq_len"]): r.get("tokens_per_s") for r in rows}
    lines = []
    for case, ref, seq_len, bar in TARGETS:
        for t in sorted({r["seq_len"] for r in rows} if seq_len is None else {seq_len}):
            ours, theirs = speed.get((case, t)), speed.get((ref, t))
            if not ours or not theirs:
                lines.append(f"{case} vs {ref} at T={t}: not measured")
                continue
            ratio = ours / theirs
            verdict = "met" if ratio >= bar else "MISSED"
            lines.append(f"{case} vs {ref} at T={t}: {ratio:.2f}x (target >= {bar}x) {verdict}")
    return lines


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Plain-text table: M tokens/s and TFLOP/s per case (columns) and T (rows)."""
    names = list(dict.fromkeys(r["name"] for r in rows))
    header = "T".rjust(6) + "".join(name.rjust(18) for name in names)
    lines = [header, " " * 6 + "".join("Mtok/s  TFLOP/s".rjust(18) for _ in names)]
    for t in sorted({r["seq_len"] for r in rows}):
        cells = []
        for name in names:
            row = next((r for r in rows if r["name"] == name and r["seq_len"] == t), None)
            if row is None or "error" in row:
                cells.append("error".rjust(18) if row else "-".rjust(18))
            else:
                cells.append(f"{row['tokens_per_s'] / 1e6:8.2f} {row['tflops']:8.1f}".rjust(18))
        lines.append(str(t).rjust(6) + "".join(cells))
    return "\n".join(lines)
