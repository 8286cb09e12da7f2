"""Post-training ``average`` caching of a deep memory (issue 23.9): the inner chunk is part of the model."""

import pytest
import torch

from mcrnn.eval.harness import with_average_caching
from mcrnn.models import MCConfig, MCForCausalLM


def _deep(memory: str, **kw) -> MCForCausalLM:
    torch.manual_seed(0)
    config = MCConfig(vocab_size=31, hidden_size=16, num_hidden_layers=2, num_heads=2, memory=memory, **kw)
    return MCForCausalLM(config).double().eval()


@pytest.mark.parametrize("memory", ["dla", "titans"])
@pytest.mark.parametrize(("chunk_size", "chunk", "segment"), [(8, 8, 12), (None, 64, 24)])
def test_a_segment_the_trained_chunk_does_not_divide_is_an_error(memory, chunk_size, chunk, segment):
    """It used to drop the chunk (``chunk_size=None``), so the twin ran another inner chunk (4 for
    segments of 12, 8 for 24): another model than the one trained, scored without a word."""
    model = _deep(memory, chunk_size=chunk_size)
    message = (
        rf"^average segment_size must be a multiple of the {memory} memory's inner chunk {chunk} "
        rf"\(part of the trained model\), got {segment}$"
    )
    with pytest.raises(ValueError, match=message):
        with_average_caching(model, segment)


@pytest.mark.parametrize("memory", ["dla", "titans"])
def test_a_dividing_segment_keeps_the_chunk_and_the_definition(memory):
    """Against DESIGN.md §3: ``average`` over one segment reads only the online memory, i.e. the base
    model; with segments of 8 the first segment's tokens are the base model's and the later ones differ
    (they also read the cached memories)."""
    model = _deep(memory, chunk_size=4)
    ids = torch.randint(0, 31, (2, 24), generator=torch.Generator().manual_seed(1))
    whole, split = with_average_caching(model, 24), with_average_caching(model, 8)
    assert whole.config.chunk_size == split.config.chunk_size == 4
    assert next(split.parameters()).dtype == torch.float64  # the twin used to come back in float32
    with torch.no_grad():
        base, one, eight = model(ids).logits, whole(ids).logits, split(ids).logits
    torch.testing.assert_close(one, base, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(eight[:, :8], base[:, :8], atol=1e-10, rtol=1e-10)
    assert (eight[:, 8:] - base[:, 8:]).abs().amax() > 1e-4
