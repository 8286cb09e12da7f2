"""One block of MCForCausalLM against a float64 reference written from its parameters."""

from __future__ import annotations

import pytest
import torch
from mc_reference import randomise_, reference_block

from mcrnn.models import MCConfig, MCForCausalLM

TINY = {"vocab_size": 23, "hidden_size": 16, "num_hidden_layers": 1, "num_heads": 2, "chunk_size": 4}


@pytest.mark.parametrize(
    "options",
    [
        {"memory": "linear", "segment_size": 4, "aggregation": "grm"},
        {"memory": "titans", "segment_size": 4, "aggregation": "soup", "memory_expansion": 2},
    ],
    ids=["linear-grm", "titans-soup"],
)
def test_block_equals_reference(options: dict) -> None:
    """``h + mixer(RMSNorm(h))`` then ``+ SwiGLU(RMSNorm(.))``, each norm with its own weight, at 1e-10."""
    torch.manual_seed(0)
    model = randomise_(MCForCausalLM(MCConfig(**TINY, **options)).double().eval(), seed=5)
    block = model.model.layers[0]
    hidden = torch.randn(2, 11, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    got, _ = block(hidden)
    torch.testing.assert_close(got, reference_block(block, hidden), atol=1e-10, rtol=1e-10)
