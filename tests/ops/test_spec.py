"""MCSpec: one validation, shared by the config, the layer and the op (issue: one spec)."""

from __future__ import annotations

import pytest
import torch

from mcrnn.layers import MemoryCachingAttention
from mcrnn.models import MCConfig
from mcrnn.ops import MCSpec, memory_caching
from mcrnn.ops.deep import layer_shapes
from mcrnn.ops.memories import SWLA, Linear, memory_inputs
from mcrnn.ops.spec import check_memory

B, T, H, D = 1, 8, 2, 4

#: option sets in the layer's / op's names (the config calls ``top_k`` ``ssc_top_k``), and the
#: message every one of the three must give (None: all three accept the set)
TABLE = [
    ({}, None),
    ({"segment_size": 3, "chunk_size": 4}, None),
    ({"segment_size": 8}, None),
    ({"segment_size": 3}, None),
    ({"segment_lengths": [3, 5]}, None),
    ({"segmentation": "log", "aggregation": "grm"}, None),
    ({"aggregation": "ssc", "top_k": 2, "segment_size": 4}, None),
    ({"memory": "swla", "segment_size": 2, "init": "independent", "pooling": "sum"}, None),
    ({"memory": "deltanet", "segment_size": 3, "chunk_size": 4}, None),
    ({"memory": "gated_deltanet", "segment_lengths": [3, 5], "aggregation": "ssc", "top_k": 1}, None),
    ({"memory": "gla", "segment_size": 3, "init": "independent", "aggregation": "average"}, None),
    ({"memory": "kda", "segment_lengths": [3, 5], "aggregation": "ssc", "top_k": 1}, None),
    ({"segmentation": "log", "memory": "gla", "init": "independent"}, None),
    ({"segmentation": "log", "memory": "kda", "aggregation": "residual"}, None),
    (
        {"segmentation": "log", "memory": "kda", "init": "independent"},
        "memory='kda' supports init='checkpoint' only",
    ),
    ({"memory": "dla", "segment_size": 8}, None),
    ({"memory": "dla", "segment_size": 6}, None),
    ({"memory": "titans", "segment_size": 8, "chunk_size": 4, "aggregation": "soup"}, None),
    ({"aggregation": "max"}, "aggregation must be one of"),
    ({"init": "zeros"}, "init must be one of"),
    ({"pooling": "max"}, "pooling must be one of"),
    ({"segmentation": "fenwick"}, "segmentation must be one of"),
    ({"aggregation": "ssc", "segment_size": 4}, "aggregation='ssc' needs top_k"),
    ({"aggregation": "ssc", "top_k": 0, "segment_size": 4}, "top_k must be an int >= 1, got 0"),
    ({"segment_size": 0}, "segment_size must be an int >= 1, got 0"),
    ({"segment_size": True}, "segment_size must be an int >= 1, got True"),
    ({"segment_size": 4, "segment_lengths": [4, 4]}, "give segment_size or segment_lengths, not both"),
    ({"segment_lengths": [0, 8]}, "segment_lengths must be a non-empty list of ints >= 1"),
    ({"segmentation": "log", "segment_size": 4}, "segmentation='log' takes no segment_size"),
    ({"segmentation": "log", "memory": "dla"}, None),
    ({"segmentation": "log", "memory": "titans", "init": "independent", "aggregation": "soup"}, None),
    ({"segmentation": "log", "memory": "swla", "aggregation": "ssc", "top_k": 1}, None),
    (
        {"segmentation": "log", "memory": "swla", "init": "independent"},
        "memory='swla' supports init='checkpoint' only",
    ),
    (
        {"segmentation": "log", "memory": "dla", "chunk_size": 6},
        "chunk_size must be a power of two for segmentation='log'",
    ),
    ({"segmentation": "log", "memory": "gated_deltanet", "aggregation": "grm"}, None),
    (
        {"segmentation": "log", "memory": "deltanet", "init": "independent"},
        "memory='deltanet' supports init='checkpoint' only",
    ),
    ({"memory": "gru"}, "memory must be one of"),
    ({"chunk_size": 0}, "chunk_size must be an int >= 1, got 0"),
    (
        {"memory": "dla", "segment_size": 8, "chunk_size": 3},
        "segment_size must be a multiple of chunk_size=3",
    ),
    ({"memory": "titans", "segment_lengths": [4, 6, 2], "chunk_size": 4}, "segment_lengths .* multiple"),
]


def _op(options: dict) -> None:
    options = dict(options)
    memory = options.get("memory", "linear")
    gen = torch.Generator().manual_seed(0)
    gates: dict = {}
    q, k, v = (torch.randn(B, T, H, D, generator=gen) for _ in range(3))
    if memory == "swla":
        gates.update(prev_gate=torch.rand(B, T, H), cur_gate=torch.rand(B, T, H))
    if memory in ("gla", "kda"):
        gates["log_decay"] = -torch.rand(B, T, H, D)  # one per key channel
    if memory in ("deltanet", "gated_deltanet", "kda"):
        gates["beta"] = torch.rand(B, T, H)
        if memory == "gated_deltanet":
            gates["log_decay"] = -torch.rand(B, T, H)
    if memory in ("dla", "titans"):
        gates["params"] = [0.1 * torch.randn(H, o, i) for o, i in layer_shapes(D, D, 2, 2)]
        gates.update(eta=0.1 * torch.rand(B, T, H), alpha=torch.ones(B, T, H))
        if memory == "titans":
            gates["momentum"] = torch.rand(B, T, H)
    if gates:
        options["memory"] = memory_inputs(memory, **gates)
    memory_caching(q, k, v, **options)


def _layer(options: dict) -> None:
    MemoryCachingAttention(H * D, H, **options)


def _config(options: dict) -> None:
    options = dict(options)
    if "top_k" in options:
        options["ssc_top_k"] = options.pop("top_k")
    MCConfig(vocab_size=11, hidden_size=H * D, num_hidden_layers=1, num_heads=H, **options)


@pytest.mark.parametrize(("options", "message"), TABLE, ids=[str(o) for o, _ in TABLE])
@pytest.mark.parametrize("build", [_op, _layer, _config], ids=["op", "layer", "config"])
def test_config_layer_and_op_agree(build, options: dict, message: str | None) -> None:
    """The three entry points accept and reject exactly the same option sets, with the same message."""
    if message is None:
        build(options)
    else:
        with pytest.raises(ValueError, match=message):
            build(options)


def test_segmentation_kinds_and_lengths() -> None:
    assert MCSpec().kind == "none" and MCSpec().lengths(5) == [5] and not MCSpec().caches
    constant = MCSpec(segment_size=4)
    assert constant.kind == "constant" and constant.lengths(10) == [4, 4, 2] and constant.lengths(8) == [4, 4]
    explicit = MCSpec(segment_lengths=[2, 5, 3])
    assert explicit.segment_lengths == (2, 5, 3)  # stored as a tuple: the spec is hashable
    assert (
        explicit.lengths(4) == [2, 2]
        and explicit.lengths(10) == [2, 5, 3]
        and explicit.lengths(12) == [2, 5, 5]
    )
    assert [p for p in range(14) if explicit.starts_segment(p)] == [2, 7]
    assert [p for p in range(9) if constant.starts_segment(p)] == [4, 8]
    assert MCSpec(segmentation="log").kind == "log"
    with pytest.raises(ValueError, match="per-token buckets"):
        MCSpec(segmentation="log").lengths(4)


def test_spec_is_frozen_and_replace_revalidates() -> None:
    spec = MCSpec(segment_size=4)
    with pytest.raises(AttributeError):
        spec.segment_size = 8  # type: ignore[misc]
    assert spec.replace(aggregation="residual").aggregation == "residual"
    with pytest.raises(ValueError, match="aggregation must be one of"):
        spec.replace(aggregation="max")
    assert hash(spec) == hash(MCSpec(segment_size=4))


def test_deep_chunk_is_picked_from_the_segments() -> None:
    """Without a chunk size a deep memory takes the largest power of two <= 64 dividing the segments;
    a matrix memory takes 64 as the cap of its own choice."""
    assert check_memory(MCSpec(segment_size=8), "dla") == 8
    assert check_memory(MCSpec(segment_size=256), "titans") == 64
    assert check_memory(MCSpec(segment_size=12), "dla") == 4
    assert check_memory(MCSpec(segment_lengths=[16, 48, 5]), "dla") == 16
    assert check_memory(MCSpec(), "titans") == 64
    assert check_memory(MCSpec(segment_size=3), "linear") == 64


def test_op_takes_a_spec_or_keywords_not_both() -> None:
    q = torch.randn(B, T, H, D)
    spec = MCSpec(segment_size=4, aggregation="residual")
    torch.testing.assert_close(
        memory_caching(q, q, q, spec=spec), memory_caching(q, q, q, segment_size=4, aggregation="residual")
    )
    with pytest.raises(ValueError, match=r"pass spec or the MC keywords \['segment_size'\], not both"):
        memory_caching(q, q, q, spec=spec, segment_size=4)
    with pytest.raises(ValueError, match="pass spec or the MC keywords"):
        MemoryCachingAttention(H * D, H, spec=spec, aggregation="grm")


def test_gate_ranges_checked_once_and_skippable() -> None:
    q = torch.randn(B, T, H, D)
    bad = torch.zeros(B, T, H)
    bad[0, 3, 1] = 0.5
    with pytest.raises(ValueError, match=r"log_decay must be finite and <= 0"):
        memory_caching(q, q, q, memory=Linear(bad))
    bad[0, 3, 1] = -float("inf")
    with pytest.raises(ValueError, match=r"log_decay must be finite and <= 0; got 1 non-finite"):
        memory_caching(q, q, q, memory=Linear(bad))
    with pytest.raises(ValueError, match=r"cur_gate must be finite and in \[0, 1\]"):
        memory_caching(q, q, q, memory=SWLA(prev_gate=torch.rand(B, T, H), cur_gate=1 + torch.rand(B, T, H)))
    memory_caching(q, q, q, memory=Linear(-torch.rand(B, T, H)), check_inputs=False)  # valid, unchecked


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda q, k, v: (q, k.double(), v), "share one dtype"),
        (lambda q, k, v: (q[:0], k[:0], v[:0]), "B, T, H, D >= 1"),
        (lambda q, k, v: (q[:, :, :0], k[:, :, :0], v[:, :, :0]), "B, T, H, D >= 1"),
    ],
)
def test_bad_tensors(change, message: str) -> None:
    q, k, v = change(*(torch.randn(B, T, H, D) for _ in range(3)))
    with pytest.raises((ValueError, TypeError), match=message):
        memory_caching(q, k, v)


def test_a_call_too_big_for_memory_fails_early_with_the_estimate(monkeypatch) -> None:
    """grm at T=16384 with one-token segments needs > 5 GiB; with 1 GiB free it fails before any work."""
    from mcrnn.ops import inputs

    monkeypatch.setattr(inputs, "available_memory", lambda device: 1 << 30)
    q = torch.empty(1, 16384, 4, 64).normal_()
    with pytest.raises(MemoryError, match=r"needs at least 5\.0 GiB .*16384 cached states .* segment_size"):
        memory_caching(q, q, q, segment_size=1)
    monkeypatch.setattr(inputs, "available_memory", lambda device: 6 << 30)
    with pytest.warns(ResourceWarning, match="needs at least"):
        inputs.check_working_set(16384, q, q)
