"""The benchmark suites: lists of named cases measured side by side in one run.

- ``ops``: forward+backward of the matrix-memory op (base = one segment, residual, grm, ssc k=2/4,
  and grm over log (Fenwick) segments, the paper's Log-Linear++) next to causal SDPA with the same
  B, H, D, across a sweep of T (issue 2's speed targets).
- ``delta``: forward+backward of MC over the gated delta rule (base, grm, ssc k=2) and the one-segment
  bases of the per-channel-decay memories (``gla``, ``kda``) next to our linear base (without and with
  decay) and causal SDPA, B=1, H=4, D=64 (issue 15's and issue 21's speed targets).
- ``peer``: our layer against the public ``memory-caching`` 0.1.0 layer (a per-token Python loop)
  at d_model 256, 4 heads, segment 64, T=2048, for every aggregation (needs the ``bench`` extra).
"""

from __future__ import annotations

import importlib.util
from typing import Any

OPS_SEQ_LENS = (1024, 2048, 4096, 8192, 16384)
GPU_SEQ_LENS = (2048, 4096, 8192, 16384, 32768)


def ops_suite(
    seq_lens: tuple[int, ...] = OPS_SEQ_LENS,
    segment_size: int = 256,
    batch: int = 1,
    heads: int = 4,
    head_dim: int = 64,
    device: str = "cpu",
    dtype: str = "float32",
) -> list[tuple[str, dict[str, Any]]]:
    """(name, case) pairs of the op sweep; ``base`` is the op with one segment (MC off)."""
    variants = {
        "base": {"segment_size": None},
        "residual": {"segment_size": segment_size, "aggregation": "residual"},
        "grm": {"segment_size": segment_size, "aggregation": "grm"},
        "ssc_k2": {"segment_size": segment_size, "aggregation": "ssc", "top_k": 2},
        "ssc_k4": {"segment_size": segment_size, "aggregation": "ssc", "top_k": 4},
        "log_grm": {"segmentation": "log", "aggregation": "grm"},
    }
    shape = {"batch": batch, "heads": heads, "head_dim": head_dim, "device": device, "dtype": dtype}
    cases = []
    for seq_len in seq_lens:
        for name, options in variants.items():
            cases.append((name, {"kind": "op", "seq_len": seq_len, "options": options, **shape}))
        cases.append(("sdpa", {"kind": "sdpa", "seq_len": seq_len, **shape}))
    return cases


DELTA_SEQ_LENS = (1024, 4096, 16384)


def delta_suite(
    seq_lens: tuple[int, ...] = DELTA_SEQ_LENS,
    segment_size: int = 256,
    batch: int = 1,
    heads: int = 4,
    head_dim: int = 64,
    device: str = "cpu",
    dtype: str = "float32",
) -> list[tuple[str, dict[str, Any]]]:
    """(name, case) pairs of the delta-rule sweep; ``*_base`` are the ops with one segment (MC off)."""
    gated = {"memory": "gated_deltanet"}
    variants = {
        "linear_base": ({}, ()),
        "linear_decay_base": ({}, ("log_decay",)),
        "gdn_base": (gated, ("log_decay", "beta")),
        "gdn_grm": ({**gated, "segment_size": segment_size, "aggregation": "grm"}, ("log_decay", "beta")),
        "gdn_ssc_k2": (
            {**gated, "segment_size": segment_size, "aggregation": "ssc", "top_k": 2},
            ("log_decay", "beta"),
        ),
        "gla_base": ({"memory": "gla"}, ("log_decay",)),  # log_decay [B, T, H, D]: one per key channel
        "kda_base": ({"memory": "kda"}, ("log_decay", "beta")),
    }
    shape = {"batch": batch, "heads": heads, "head_dim": head_dim, "device": device, "dtype": dtype}
    cases = []
    for seq_len in seq_lens:
        for name, (options, gates) in variants.items():
            case = {"kind": "op", "seq_len": seq_len, "options": options, "gates": list(gates), **shape}
            cases.append((name, case))
        cases.append(("sdpa", {"kind": "sdpa", "seq_len": seq_len, **shape}))
    return cases


def peer_available() -> bool:
    """Whether the public ``memory-caching`` package is installed (the ``bench`` extra)."""
    return importlib.util.find_spec("memory_caching") is not None


def peer_suite(seq_len: int = 2048, segment_size: int = 64) -> list[tuple[str, dict[str, Any]]]:
    """Our layer and, when installed, the peer's, for every aggregation at the peer's settings."""
    shape = {"batch": 1, "seq_len": seq_len, "hidden_size": 256, "heads": 4}
    cases = []
    for aggregation in ("residual", "grm", "soup", "ssc"):
        top_k = 2 if aggregation == "ssc" else None
        ours = {"aggregation": aggregation, "segment_size": segment_size, "top_k": top_k}
        cases.append((f"mcrnn_{aggregation}", {"kind": "layer", "options": ours, **shape}))
        if peer_available():
            theirs = {"aggregation": aggregation, "segment_size": segment_size, "ssc_top_k": 2}
            # one timed run after none untimed: the peer takes seconds per step, so warm-up matters little
            cases.append(
                (
                    f"peer_{aggregation}",
                    {"kind": "peer", "options": theirs, "repeats": 2, "warmup": 0, **shape},
                )
            )
    return cases
