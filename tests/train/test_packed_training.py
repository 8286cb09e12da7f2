"""Training on packed documents: windows carry document starts, the loop cuts cu_seqlens there."""

from __future__ import annotations

import json

import torch

from mcrnn.data import TextDataset
from mcrnn.models import MCConfig, MCForCausalLM
from mcrnn.train.evaluate import lm_logits
from mcrnn.train.sampler import collate


def _dataset(tmp_path, **kwargs) -> TextDataset:
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in ["abc", "hello", "xy", "mcrnn!"]) + "\n")
    return TextDataset(path, seq_len=8, split="all", **kwargs)


def test_windows_mark_document_starts_and_drop_cross_document_targets(tmp_path) -> None:
    plain, packed = _dataset(tmp_path), _dataset(tmp_path, separate_documents=True)
    item = packed[0]  # "abc<eos>hello" ...
    eos = packed.tokenizer.eos_id
    assert item["input_ids"].tolist()[:5] == [*b"abc", eos, ord("h")]
    assert item["doc_start"].tolist()[:6] == [False, False, False, False, True, False]
    assert item["labels"][3] == -100 and plain[0]["labels"][3] == ord("h")
    assert "doc_start" not in plain[0]


def test_packed_logits_equal_documents_run_alone(tmp_path) -> None:
    torch.manual_seed(0)
    model = MCForCausalLM(MCConfig(vocab_size=257, hidden_size=16, num_hidden_layers=1, num_heads=2,
                                   segment_size=2)).eval()
    data = _dataset(tmp_path, separate_documents=True)
    batch = collate(data, [0, 1])
    with torch.no_grad():
        logits = lm_logits(model, batch["input_ids"], batch["doc_start"])
        row = batch["input_ids"][0]
        first = model(row[None, :4]).logits[0]  # "abc<eos>": the first document of window 0
        second = model(row[None, 4:]).logits[0]  # "hel..." starts fresh
    torch.testing.assert_close(logits[0, :4], first)
    torch.testing.assert_close(logits[0, 4:], second)
    with torch.no_grad():
        window_one = model(batch["input_ids"][1:2, : int(batch["doc_start"][1].nonzero()[0])]).logits[0]
    torch.testing.assert_close(logits[1, : len(window_one)], window_one)  # no state from window 0


def test_yaml_text_run_with_separate_documents(tmp_path) -> None:
    from mcrnn.train.config import run_config

    _dataset(tmp_path)  # writes docs.jsonl
    model = {"vocab_size": 257, "hidden_size": 16, "num_hidden_layers": 1, "num_heads": 2, "segment_size": 2}
    data = {"type": "text", "paths": [str(tmp_path / "docs.jsonl")], "seq_len": 8, "split": "all"}
    train = {"steps": 2, "batch_size": 2, "out_dir": str(tmp_path / "run"), "eval_every": 0, "save_every": 0}
    raw = {"model": model, "data": {**data, "separate_documents": True}, "train": train}
    raw["eval_data"] = dict(raw["data"])
    result = run_config(raw)
    assert len(result.losses) == 2 and all(torch.isfinite(torch.tensor(result.losses)))
