"""The retrofit's cost: a Qwen3.5-style gated DeltaNet layer (transformers, PyTorch fallback) with MC
added by :func:`mcrnn.retrofit.add_memory_caching` against the same layer unwrapped, forward only
(inference, ``torch.no_grad``): the retrofit's read costs one extra cached-state read per segment."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

#: the layer's shape: hidden 512, 4 key heads and 8 value heads (GVA) of 64, conv 4
LAYER = {
    "hidden_size": 512,
    "linear_num_key_heads": 4,
    "linear_num_value_heads": 8,
    "linear_key_head_dim": 64,
    "linear_value_head_dim": 64,
}


def retrofit_suite(
    seq_lens: tuple[int, ...] = (4096,), segment_size: int = 256
) -> list[tuple[str, dict[str, Any]]]:
    """``retrofit_base`` (the host layer) and ``retrofit_grm`` (MC ``grm``, query router) per T."""
    cases = []
    for seq_len in seq_lens:
        base = {"kind": "retrofit", "seq_len": seq_len, "batch": 1, "mc": None}
        cases.append(("retrofit_base", base))
        mc = {"segment_size": segment_size, "aggregation": "grm"}
        cases.append(("retrofit_grm", {**base, "mc": mc}))
    return cases


def build_retrofit(case: dict[str, Any]) -> tuple[Callable[[], None], int]:
    """``(step, tokens)``: ``step()`` runs the layer's forward once on random hidden states."""
    import transformers

    from mcrnn.retrofit import add_memory_caching

    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(
        "qwen3_5_text", **LAYER, num_hidden_layers=1, layer_types=["linear_attention"]
    )
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    if case["mc"] is not None:
        add_memory_caching(model, **case["mc"])
    layer = model.model.layers[0].linear_attn
    x = torch.randn(case["batch"], case["seq_len"], LAYER["hidden_size"])

    def step() -> None:
        with torch.no_grad():
            layer(x)

    return step, case["batch"] * case["seq_len"]
