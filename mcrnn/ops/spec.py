"""``MCSpec``: what Memory Caching does, validated once (DESIGN.md §3-§5).

A spec holds the segmentation (none, constant size, explicit lengths, or the per-token log
partition), the aggregation with its ``top_k``, the segment initialisation and the router-key pooling.
It is frozen and checks itself at construction, so the config, the layer, the ops and the caches can
carry it without checking again. :func:`check_memory` is the one place that checks a spec against a
memory family and returns the inner chunk size that family runs with.

Segment boundaries are counted from the first token of the stream: a call over tokens
``[0, T)`` (a prefill) and later decoding calls see the same segments. Explicit ``segment_lengths``
describe the stream; tokens past their sum belong to the last segment.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

AGGREGATIONS = ("residual", "grm", "soup", "ssc", "average")
INITS = ("checkpoint", "independent")
POOLINGS = ("mean", "sum")
SEGMENTATIONS = ("constant", "log")
#: delta-rule matrix memories (``M_t = a_t (I - b_t k_t k_t^T) M_{t-1} + b_t k_t v_t^T``, DESIGN.md §6)
DELTA_MEMORIES = ("deltanet", "gated_deltanet")
#: matrix memories with a decay per key channel, ``log_decay`` [B, T, H, Dk] (``gla``: gated linear
#: attention, ``kda``: Kimi Delta Attention, the delta rule after a per-channel decay; DESIGN.md §6)
CHANNEL_DECAY_MEMORIES = ("gla", "kda")
MATRIX_MEMORIES = ("linear", "swla", *DELTA_MEMORIES, *CHANNEL_DECAY_MEMORIES)
DEEP_MEMORIES = ("dla", "titans")
MEMORIES = MATRIX_MEMORIES + DEEP_MEMORIES
#: the largest inner chunk the parallel paths use when none is given
DEFAULT_CHUNK_SIZE = 64


def check_choice(name: str, value: object, allowed: Sequence[str]) -> None:
    """Raise ``ValueError`` naming ``name`` when ``value`` is not one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")


def check_positive_int(name: str, value: object) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is an ``int >= 1`` (bools are not ints)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


@dataclass(frozen=True)
class MCSpec:
    """Memory Caching options, checked at construction.

    Args:
        aggregation: ``residual | grm | soup | ssc | average`` (DESIGN.md §3).
        segment_size: constant segments of this many tokens (the last may be shorter).
        segment_lengths: explicit segment lengths of the stream (tokens past their sum belong to the
            last segment); give at most one of ``segment_size`` and ``segment_lengths``. Neither, with
            ``segmentation="constant"``: one segment, the base memory.
        segmentation: ``constant`` (the segments above) or ``log`` (the per-token Fenwick partition of
            DESIGN.md §5; takes no size or lengths; with ``grm`` the paper's Log-Linear++).
        top_k: cached segments each token reads under ``ssc`` (required there, unused elsewhere).
        init: ``checkpoint`` (a segment continues from the previous state) or ``independent``.
        pooling: router-key pooling ``mean | sum``.
    """

    aggregation: str = "grm"
    segment_size: int | None = None
    segment_lengths: tuple[int, ...] | None = None
    segmentation: str = "constant"
    top_k: int | None = None
    init: str = "checkpoint"
    pooling: str = "mean"

    def __post_init__(self) -> None:
        check_choice("aggregation", self.aggregation, AGGREGATIONS)
        check_choice("init", self.init, INITS)
        check_choice("pooling", self.pooling, POOLINGS)
        check_choice("segmentation", self.segmentation, SEGMENTATIONS)
        if self.aggregation == "ssc" and self.top_k is None:
            raise ValueError("aggregation='ssc' needs top_k (an int >= 1), got None")
        if self.top_k is not None:
            check_positive_int("top_k", self.top_k)
        if self.segment_size is not None and self.segment_lengths is not None:
            raise ValueError("give segment_size or segment_lengths, not both")
        if self.segment_size is not None:
            check_positive_int("segment_size", self.segment_size)
        if self.segment_lengths is not None:
            lengths = self.segment_lengths
            if isinstance(lengths, (str, bytes)) or not isinstance(lengths, Sequence) or not lengths:
                raise ValueError(f"segment_lengths must be a non-empty list of ints >= 1, got {lengths!r}")
            if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in lengths):
                raise ValueError(
                    f"segment_lengths must be a non-empty list of ints >= 1, got {list(lengths)}"
                )
            object.__setattr__(self, "segment_lengths", tuple(lengths))
        if self.segmentation == "log" and (self.segment_size is not None or self.segment_lengths is not None):
            raise ValueError("segmentation='log' takes no segment_size or segment_lengths")

    @classmethod
    def from_options(cls, **options: object) -> MCSpec:
        """A spec from keyword options, ``None`` meaning the field's default."""
        return cls(**{name: value for name, value in options.items() if value is not None})

    def replace(self, **changes: object) -> MCSpec:
        """A copy with ``changes`` applied (checked again)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, object]:
        """The fields as plain values (lists for lengths), e.g. for a JSON config."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if out["segment_lengths"] is not None:
            out["segment_lengths"] = list(out["segment_lengths"])
        return out

    @property
    def kind(self) -> str:
        """``none`` (one segment), ``constant``, ``lengths`` or ``log``."""
        if self.segmentation == "log":
            return "log"
        if self.segment_size is not None:
            return "constant"
        return "none" if self.segment_lengths is None else "lengths"

    @property
    def caches(self) -> bool:
        """Whether any token can read a cached state (not a single segment)."""
        return self.kind != "none"

    def lengths(self, seq_len: int) -> list[int]:
        """Lengths of the segments covering tokens ``[0, seq_len)`` of a stream (not for ``log``)."""
        if self.kind == "log":
            raise ValueError("segmentation='log' has per-token buckets, not segment lengths")
        if self.kind == "none":
            return [seq_len]
        if self.kind == "constant":
            full, rest = divmod(seq_len, self.segment_size)
            return [self.segment_size] * full + ([rest] if rest else [])
        out, total = [], 0
        for n in self.segment_lengths[:-1]:
            if total + n >= seq_len:
                break
            out.append(n)
            total += n
        return [*out, seq_len - total]

    def starts_segment(self, position: int) -> bool:
        """Whether the token at ``position`` (0-based, in the stream) opens a segment after the first."""
        if position == 0 or self.kind in ("none", "log"):
            return False
        if self.kind == "constant":
            return position % self.segment_size == 0
        total = 0
        for n in self.segment_lengths[:-1]:
            total += n
            if total == position:
                return True
            if total > position:
                return False
        return False


def check_memory(spec: MCSpec, memory: str, chunk_size: int | None = None) -> int:
    """Check that ``memory`` supports ``spec``; return the inner chunk size it runs with.

    For a matrix memory (``linear``, ``swla``, ``deltanet``, ``gated_deltanet``, ``gla``, ``kda``) the chunk
    is an implementation detail: ``chunk_size`` (default 64) caps the chunk the parallel path picks, and any
    segmentation works (the log segmentation for ``linear`` and ``gla``, and for ``swla``, the delta rule
    and ``kda`` with ``init="checkpoint"``). For a deep
    memory (``dla``, ``titans``) the inner chunk ``b`` is part of the model (every gradient of a chunk
    is taken at the chunk-start weights, DESIGN.md §6), so segments must be multiples of it (all but
    the last); ``chunk_size=None`` picks the largest power of two <= 64 that divides them. With the log
    segmentation a deep memory's chunk must be a power of two (None: 64), so that its chunks tile the
    aligned buckets.
    """
    check_choice("memory", memory, MEMORIES)
    if chunk_size is not None:
        check_positive_int("chunk_size", chunk_size)
    if spec.kind == "log" and memory in ("swla", "kda", *DELTA_MEMORIES) and spec.init != "checkpoint":
        raise ValueError(
            f"segmentation='log' with memory={memory!r} supports init='checkpoint' only (an independent "
            "bucket restarts the memory, and its state is no merge of the smaller buckets' states)"
        )
    if memory in MATRIX_MEMORIES:
        return DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size
    spans = {"constant": [spec.segment_size], "lengths": list(spec.segment_lengths or ())[:-1]}.get(
        spec.kind, []
    )
    if chunk_size is None:  # a divisor of 64 is a power of two
        return math.gcd(DEFAULT_CHUNK_SIZE, *spans)
    if spec.kind == "log" and chunk_size & (chunk_size - 1):
        raise ValueError(
            f"chunk_size must be a power of two for segmentation='log' with memory={memory!r} (the inner "
            f"chunks must tile the aligned buckets), got {chunk_size}"
        )
    if any(n % chunk_size for n in spans):
        name = "segment_size" if spec.kind == "constant" else "segment_lengths (all but the last)"
        raise ValueError(
            f"{name} must be a multiple of chunk_size={chunk_size} for memory={memory!r} (the inner "
            f"chunk of a deep memory), got {spec.segment_size if spec.kind == 'constant' else list(spans)}"
        )
    return chunk_size
