"""Beam search reorders the cache: beams with the cache equal beams without it."""

from __future__ import annotations

import pytest
import torch

from mcrnn.models import MCConfig, MCForCausalLM

TINY = {"vocab_size": 37, "hidden_size": 32, "num_hidden_layers": 2, "num_heads": 2}


@pytest.mark.parametrize(
    "options",
    [
        {"segment_size": 4, "aggregation": "grm"},
        {"segmentation": "log", "aggregation": "ssc", "ssc_top_k": 1},
        {"memory": "swla", "segment_size": 3, "init": "independent"},
        {"memory": "titans", "segment_size": 4, "memory_expansion": 2},
        {"segment_size": 4, "layer_mixers": ["mc", "attention"]},
    ],
    ids=["grm", "log-ssc", "swla", "titans", "hybrid"],
)
def test_beams_with_cache_equal_beams_without(options: dict) -> None:
    torch.manual_seed(0)
    model = MCForCausalLM(MCConfig(**TINY, **options)).eval()
    prompt = torch.randint(1, 37, (2, 6))
    kwargs = dict(max_new_tokens=7, num_beams=3, num_return_sequences=2, do_sample=False, pad_token_id=0)
    cached = model.generate(prompt, use_cache=True, **kwargs)
    uncached = model.generate(prompt, use_cache=False, **kwargs)
    assert cached.shape == (4, 13)
    assert torch.equal(cached, uncached)
