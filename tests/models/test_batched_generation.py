"""Batched generation with left padding equals generating every prompt alone, for every mixer."""

from __future__ import annotations

import pytest
import torch
from mixer_configs import MIXERS, TINY

from mcrnn.layers import MemoryCachingAttention
from mcrnn.models import MCConfig, MCForCausalLM

PAD = 0


def _left_pad(prompts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), PAD)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = prompt
        mask[row, width - len(prompt) :] = 1
    return ids, mask


@pytest.mark.parametrize("name", list(MIXERS))
def test_left_padded_batch_generates_each_prompt_exactly(name: str) -> None:
    torch.manual_seed(0)
    model = MCForCausalLM(MCConfig(**TINY, **MIXERS[name])).eval()
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, 37, (n,), generator=gen) for n in (9, 4, 6)]
    ids, mask = _left_pad(prompts)
    options = dict(max_new_tokens=6, do_sample=False, pad_token_id=PAD)
    batched = model.generate(ids, attention_mask=mask, **options)
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits
    for row, prompt in enumerate(prompts):
        alone = model.generate(
            prompt[None], attention_mask=torch.ones(1, len(prompt), dtype=torch.long), **options
        )
        assert torch.equal(batched[row, ids.shape[1] :], alone[0, len(prompt) :]), f"row {row}"
        with torch.no_grad():
            expected = model(prompt[None]).logits[0]
        torch.testing.assert_close(logits[row, ids.shape[1] - len(prompt) :], expected, atol=1e-5, rtol=1e-4)


def test_left_padded_rows_count_segments_from_their_first_token() -> None:
    """Layer level, float64: a left-padded row equals the row alone, outputs and continued decoding."""
    torch.manual_seed(0)
    layer = MemoryCachingAttention(8, 2, segment_size=3, aggregation="grm").double()
    x = torch.randn(2, 7, 8, dtype=torch.float64)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    y, cache = layer(x, attention_mask=mask, use_cache=True)
    alone, alone_cache = layer(x[:1, 2:], use_cache=True)
    torch.testing.assert_close(y[0, 2:], alone[0], rtol=1e-12, atol=1e-12)
    assert torch.equal(y[0, :2], torch.zeros(2, 8, dtype=torch.float64))
    step = torch.randn(2, 1, 8, dtype=torch.float64)
    next_y, _ = layer(step, cache=cache, use_cache=True)
    expected, _ = layer(step[:1], cache=alone_cache)
    torch.testing.assert_close(next_y[:1], expected, rtol=1e-12, atol=1e-12)
    holed, _ = layer(x, attention_mask=torch.tensor([[1, 0, 1, 1, 1, 1, 1], [1] * 7]))
    skipped, _ = layer(x[:1, [0, 2, 3, 4, 5, 6]])
    torch.testing.assert_close(holed[0, [0, 2, 3, 4, 5, 6]], skipped[0], rtol=1e-12, atol=1e-12)
