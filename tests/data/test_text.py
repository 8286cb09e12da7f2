import json
from pathlib import Path

import pytest
import torch

from mcrnn.data import ByteTokenizer, TextDataset

REPO_ROOT = Path(__file__).resolve().parents[2]
#: the shared data folder sits next to the checkout (``../shared/data``); a checkout that carries it
#: inside (``shared/data``, as on the device machines) works too
SHAKESPEARE_CANDIDATES = [
    root / "shared" / "data" / "tinyshakespeare.txt" for root in (REPO_ROOT.parent, REPO_ROOT)
]
SHAKESPEARE = next((p for p in SHAKESPEARE_CANDIDATES if p.is_file()), SHAKESPEARE_CANDIDATES[0])


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
    """train is the first 80 % of the stream, val the rest: together exactly the stream, no token in
    both, and every window of each lies inside its own part."""
    (tmp_path / "a.txt").write_text("".join(f"{i:04d}|" for i in range(100)), encoding="utf-8")
    whole = TextDataset(tmp_path / "a.txt", seq_len=8, split="all").stream  # 500 bytes + eos
    train = TextDataset(tmp_path / "a.txt", seq_len=8, split="train", val_fraction=0.2)
    val = TextDataset(tmp_path / "a.txt", seq_len=8, split="val", val_fraction=0.2)
    cut = int(501 * 0.8)
    assert torch.equal(train.stream, whole[:cut]) and torch.equal(val.stream, whole[cut:])
    last = train[len(train) - 1]
    assert torch.equal(last["labels"], whole[(len(train) - 1) * 8 + 1 : len(train) * 8 + 1])
    assert len(train) * 8 + 1 <= cut  # the last train window's labels end before the cut
    assert torch.equal(val[0]["input_ids"], whole[cut : cut + 8])
    decode = ByteTokenizer().decode
    train_records = set(decode(train.stream.tolist()).split("|")[:-1])
    val_records = set(decode(val.stream.tolist()[:-1]).split("|")[1:])  # whole records only
    assert train_records and val_records and not train_records & val_records


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


@pytest.mark.skipif(
    not SHAKESPEARE.is_file(),
    reason=f"tinyshakespeare.txt not found at {' or '.join(map(str, SHAKESPEARE_CANDIDATES))}",
)
def test_tinyshakespeare():
    ds = TextDataset(SHAKESPEARE, seq_len=128, split="val")
    assert len(ds) > 100
    assert "First Citizen" in ByteTokenizer().decode(
        TextDataset(SHAKESPEARE, seq_len=64)[0]["input_ids"].tolist()
    )
