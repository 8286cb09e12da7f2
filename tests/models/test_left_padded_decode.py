"""Decode-step logits (not only the greedy tokens) of a left-padded prompt with the attention mixer equal
the unpadded row's (issue 23.9)."""

import pytest
import torch

from mcrnn.models import MCConfig, MCForCausalLM


@pytest.mark.parametrize("conv", [0, 3], ids=["attention", "attention-conv"])
def test_left_padded_row_decodes_the_logits_of_the_row_alone(conv):
    torch.manual_seed(0)
    config = MCConfig(
        vocab_size=37,
        hidden_size=32,
        num_hidden_layers=2,
        num_heads=2,
        mixer="attention",
        attention_conv_size=conv,
        pad_token_id=0,
    )
    model = MCForCausalLM(config).double().eval()
    gen = torch.Generator().manual_seed(1)
    short, long = torch.randint(1, 37, (1, 5), generator=gen), torch.randint(1, 37, (1, 9), generator=gen)
    batch = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), short], 1), long])
    mask = (batch != 0).long()
    options = {
        "max_new_tokens": 6,
        "do_sample": False,
        "output_logits": True,
        "return_dict_in_generate": True,
    }
    with torch.no_grad():
        padded = model.generate(batch, attention_mask=mask, **options)
        alone = model.generate(short, attention_mask=torch.ones_like(short), **options)
    assert len(padded.logits) == len(alone.logits) == 6
    for step, (row, reference) in enumerate(zip(padded.logits, alone.logits, strict=True)):
        torch.testing.assert_close(row[0], reference[0], atol=1e-8, rtol=1e-8, msg=f"decode step {step}")
    assert torch.equal(padded.sequences[0, 4:], alone.sequences[0])
