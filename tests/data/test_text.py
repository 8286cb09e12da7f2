import json
from pathlib import Path

import pytest
import torch

from mcrnn.data import ByteTokenizer, TextDataset

SHAKESPEARE = Path(__file__).resolve().parents[3] / "shared" / "data" / "tinyshakespeare.txt"


def test_txt_and_jsonl_windows(tmp_path):
    (tmp_path / "a.txt").write_text("hello world, " * 20, encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(
        "\n".join(json.dumps({"text": f"doc {i} é"}) for i in range(5)) + "\n", encoding="utf-8"
    )
    ds = TextDataset([tmp_path / "a.txt", tmp_path / "b.jsonl"], seq_len=16, split="all")
    item = ds[0]
    assert item["input_ids"].shape == (16,) and torch.equal(item["input_ids"][1:], item["labels"][:-1])
    stream = ds.stream
    assert (stream == ByteTokenizer.eos_id).sum() == 6  # one eos per document
    assert len(ds) == (len(stream) - 1) // 16


def test_train_val_split_disjoint(tmp_path):
    (tmp_path / "a.txt").write_text("abcdefghij" * 50, encoding="utf-8")
    train = TextDataset(tmp_path / "a.txt", seq_len=8, split="train", val_fraction=0.2)
    val = TextDataset(tmp_path / "a.txt", seq_len=8, split="val", val_fraction=0.2)
    assert len(train.stream) + len(val.stream) == 501


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        TextDataset(tmp_path / "missing.txt", seq_len=8)
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty.txt"):
        TextDataset(tmp_path / "empty.txt", seq_len=8)
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00abc")
    with pytest.raises(ValueError, match="bin.txt"):
        TextDataset(tmp_path / "bin.txt", seq_len=8)
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{oops\n', encoding="utf-8")
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        TextDataset(tmp_path / "bad.jsonl", seq_len=8)
    with pytest.raises(ValueError, match="seq_len"):
        TextDataset(tmp_path / "bad.jsonl", seq_len=0)


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="tinyshakespeare.txt not present")
def test_tinyshakespeare():
    ds = TextDataset(SHAKESPEARE, seq_len=128, split="val")
    assert len(ds) > 100
    assert "First Citizen" in ByteTokenizer().decode(
        TextDataset(SHAKESPEARE, seq_len=64)[0]["input_ids"].tolist()
    )
