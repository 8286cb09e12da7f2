"""Behaviours above the ops that a planted bug must break (issue 23.9, training parts): gradient
accumulation over micro-batches with different numbers of labelled tokens equals one batch; a shard of
exactly k x seq_len (+1) tokens gives its windows with none lost or duplicated; a document that fills a
shard exactly closes it, with no empty shard and no lost token."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mcrnn.data import IGNORE_INDEX
from mcrnn.models import MCConfig, MCForCausalLM
from mcrnn.train import distributed as D
from mcrnn.train.data_shards import TokenShardDataset, prepare_shards
from mcrnn.train.loop import _accumulate_gradients

VOCAB, SEQ = 23, 12


def _model() -> MCForCausalLM:
    torch.manual_seed(0)
    config = MCConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_heads=2, segment_size=4)
    return MCForCausalLM(config)


def _batch(rows: int, labelled: list[int], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``rows`` random sequences; row ``r`` has its last ``labelled[r]`` positions labelled."""
    ids = torch.randint(0, VOCAB, (rows, SEQ), generator=generator)
    labels = torch.randint(0, VOCAB, (rows, SEQ), generator=generator)
    for row, count in enumerate(labelled):
        labels[row, : SEQ - count] = IGNORE_INDEX
    return {"input_ids": ids, "labels": labels}


def test_accumulation_over_unequal_micro_batches_equals_one_batch() -> None:
    generator = torch.Generator().manual_seed(1)
    # 1, 23 and 4 labelled tokens (one row has none): a mean per micro-batch would weigh them equally
    micro = [_batch(2, [1, 0], generator), _batch(2, [12, 11], generator), _batch(2, [3, 1], generator)]
    whole = {key: torch.cat([b[key] for b in micro]) for key in micro[0]}
    ctx = D.DistContext(rank=0, world=1, device=torch.device("cpu"))
    one, accumulated = _model(), _model()
    loss_one = _accumulate_gradients(one, [whole], ctx, None)
    loss_accumulated = _accumulate_gradients(accumulated, micro, ctx, None)
    # the definition: mean cross-entropy over every labelled token of the step
    with torch.no_grad():
        logits = _model()(input_ids=whole["input_ids"]).logits
    expected = F.cross_entropy(logits.flatten(0, 1), whole["labels"].flatten(), ignore_index=IGNORE_INDEX)
    assert loss_one == pytest.approx(expected.item(), rel=1e-6)
    assert loss_accumulated == pytest.approx(expected.item(), rel=1e-6)  # float32 sums
    for (name, a), b in zip(one.named_parameters(), accumulated.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)


def _byte_shards(tmp_path, sizes: list[int], shard_tokens: int):
    """Shards from one .jsonl document per size (``size - 1`` bytes + eos = ``size`` tokens)."""
    corpus = tmp_path / "corpus.jsonl"
    letters = "abcdefghijklmnopqrstuvwxyz"
    docs = [letters[i % 26] * (size - 1) for i, size in enumerate(sizes)]
    corpus.write_text("".join(json.dumps({"text": doc}) + "\n" for doc in docs))
    index = prepare_shards([corpus], tmp_path / "shards", shard_tokens=shard_tokens)
    tokens = np.array([t for doc in docs for t in [*doc.encode(), 256]])
    return index, tokens


def test_a_document_that_fills_a_shard_exactly_closes_it(tmp_path) -> None:
    # 24 fills the first shard; 5 + 24 reach it in the second; the last 24 fills the third exactly
    index, tokens = _byte_shards(tmp_path, [24, 5, 24, 24], shard_tokens=24)
    assert [(s["tokens"], s["documents"]) for s in index["shards"]] == [(24, 1), (29, 2), (24, 1)]
    assert index["tokens"] == tokens.size == 77 and index["documents"] == 4
    written = [np.fromfile(tmp_path / "shards" / s["file"], dtype=np.uint16) for s in index["shards"]]
    np.testing.assert_array_equal(np.concatenate(written), tokens)  # no token lost, none repeated
    files = sorted(p.name for p in (tmp_path / "shards").iterdir())
    assert files == ["index.json", *(f"shard_0000{i}.bin" for i in range(3))]  # no empty shard


@pytest.mark.parametrize("extra", [-1, 0, 1])
def test_windows_of_a_shard_of_k_times_seq_len_tokens(tmp_path, extra) -> None:
    k = 3
    size = k * SEQ + extra  # each shard holds one document of exactly this many tokens
    index, tokens = _byte_shards(tmp_path, [size, size], shard_tokens=size)
    assert [s["tokens"] for s in index["shards"]] == [size, size]
    data = TokenShardDataset(tmp_path / "shards", SEQ, split="all")
    per_shard = (size - 1) // SEQ  # windows of SEQ + 1 tokens that overlap by one token
    assert per_shard == {-1: k - 1, 0: k - 1, 1: k}[extra]
    assert len(data) == 2 * per_shard
    for shard in range(2):
        shard_tokens = tokens[shard * size : (shard + 1) * size]
        for w in range(per_shard):
            item = data[shard * per_shard + w]
            window = shard_tokens[w * SEQ : (w + 1) * SEQ + 1]
            assert item["input_ids"].tolist() == window[:-1].tolist()
            assert item["labels"].tolist() == window[1:].tolist()
    with pytest.raises(IndexError):
        data[len(data)]
