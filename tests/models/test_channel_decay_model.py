"""Language models over the per-channel-decay memories (gla, kda) come from MCConfig alone, train,
round-trip and generate (greedy decoding through the cache equals the parallel forward's argmax)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import mcrnn  # noqa: F401  (registers the Auto classes)
from mcrnn.models import MCConfig, MCForCausalLM

VOCAB = 37


@pytest.mark.parametrize(
    "options",
    [
        {"memory": "gla", "segment_size": 4, "aggregation": "grm"},
        {"memory": "gla", "segmentation": "log", "aggregation": "grm", "init": "independent"},
        {"memory": "kda", "segment_size": 3, "aggregation": "ssc", "ssc_top_k": 1, "init": "independent"},
        {"memory": "kda", "segmentation": "log", "aggregation": "average"},
    ],
    ids=["gla-grm", "gla-log-independent", "kda-ssc", "kda-log"],
)
def test_channel_decay_models_train_generate_and_reload(options, tmp_path):
    torch.manual_seed(0)
    config = MCConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_heads=2, **options)
    model = MCForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.randint(1, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))  # 0 is the pad
    for _ in range(2):
        loss = model(ids, labels=ids).loss
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    prompt = ids[:, :5]
    generated = model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        logits = model(generated).logits
    assert torch.equal(logits[:, 4:-1].argmax(-1), generated[:, 5:])
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.memory == options["memory"]
    assert torch.equal(loaded.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0), generated)
