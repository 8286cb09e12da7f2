"""Token shards (``mcrnn prepare-data``) and the ``shards`` training data: the tokens written, the windows
read, the splits, the checks of a damaged folder, a deterministic sampler that draws each epoch's
permutation once, and exact resumption of a run trained from shards."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mcrnn.cli import main
from mcrnn.data import TextDataset
from mcrnn.train import sampler
from mcrnn.train.data_shards import TokenShardDataset, prepare_shards, token_dtype

SHAKESPEARE = Path(__file__).parents[3] / "shared" / "data" / "tinyshakespeare.txt"
DOCS = ["first document: alpha beta", "second, a longer one: gamma delta epsilon zeta", "third é ü", "fourth"]


def _jsonl(tmp_path) -> Path:
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": doc, "id": i}) + "\n" for i, doc in enumerate(DOCS)))
    return path


def _expected_bytes() -> np.ndarray:
    return np.array([token for doc in DOCS for token in [*doc.encode(), 256]])


def _read_all(folder: Path) -> np.ndarray:
    index = json.loads((folder / "index.json").read_text())
    return np.concatenate([np.fromfile(folder / s["file"], dtype=index["dtype"]) for s in index["shards"]])


def test_jsonl_documents_become_shards_of_whole_documents(tmp_path):
    index = prepare_shards([_jsonl(tmp_path)], tmp_path / "out", shard_tokens=40)
    expected = _expected_bytes()
    assert index["dtype"] == "uint16" and index["documents"] == len(DOCS) and index["tokens"] == len(expected)
    np.testing.assert_array_equal(_read_all(tmp_path / "out"), expected)
    assert len(index["shards"]) > 1
    for shard in index["shards"]:  # every shard ends with a document's end
        assert np.fromfile(tmp_path / "out" / shard["file"], dtype=np.uint16)[-1] == 256
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


def test_parquet_equals_jsonl(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.table({"text": DOCS}), tmp_path / "corpus.parquet")
    prepare_shards([tmp_path / "corpus.parquet"], tmp_path / "pq")
    np.testing.assert_array_equal(_read_all(tmp_path / "pq"), _expected_bytes())


def test_hugging_face_tokenizer_from_a_local_folder(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for doc in DOCS for w in doc.split()})
    vocab = {"[UNK]": 0, "</s>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    model = tokenizers.models.WordLevel(vocab, unk_token="[UNK]")
    backend = tokenizers.Tokenizer(model)
    backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="[UNK]").save_pretrained(
        tmp_path / "tok"
    )
    index = prepare_shards([_jsonl(tmp_path)], tmp_path / "out", tokenizer=str(tmp_path / "tok"))
    expected = [t for doc in DOCS for t in [*(vocab[w] for w in doc.split()), 1]]
    assert (index["vocab_size"], index["eos_id"]) == (len(vocab), 1)
    assert _read_all(tmp_path / "out").tolist() == expected


def test_windows_splits_and_documents(tmp_path):
    prepare_shards([_jsonl(tmp_path)], tmp_path / "out", shard_tokens=40)
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    seq = 8
    data = TokenShardDataset(tmp_path / "out", seq, split="all")
    assert len(data) == sum((s["tokens"] - 1) // seq for s in index["shards"])
    shard0 = np.fromfile(tmp_path / "out" / "shard_00000.bin", dtype=np.uint16).astype(np.int64)
    assert data[1]["input_ids"].tolist() == shard0[8:16].tolist()
    assert data[1]["labels"].tolist() == shard0[9:17].tolist()
    first_of_shard1 = (index["shards"][0]["tokens"] - 1) // seq  # windows restart at a shard's start
    shard1 = np.fromfile(tmp_path / "out" / "shard_00001.bin", dtype=np.uint16).astype(np.int64)
    assert data[first_of_shard1]["input_ids"].tolist() == shard1[:8].tolist()
    train = TokenShardDataset(tmp_path / "out", seq, val_fraction=0.25)
    val = TokenShardDataset(tmp_path / "out", seq, split="val", val_fraction=0.25)
    assert len(train) + len(val) == len(data) and len(val) == int(len(data) * 0.25)
    assert val[0]["input_ids"].tolist() == data[len(train)]["input_ids"].tolist()
    packed = TokenShardDataset(tmp_path / "out", seq, split="all", separate_documents=True)
    for i in range(len(packed)):
        item, ids = packed[i], data[i]["input_ids"]
        assert item["doc_start"][1:].tolist() == (ids[:-1] == 256).tolist()
        assert (item["labels"][ids == 256] == -100).all()


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="tinyshakespeare.txt is not in ../shared/data")
def test_tinyshakespeare_windows_equal_the_text_dataset(tmp_path, capsys):
    assert main(["prepare-data", str(SHAKESPEARE), "--out", str(tmp_path / "shk")]) == 0
    assert "1,115,395 tokens (uint16) of 1 documents in 1 shard(s)" in capsys.readouterr().out
    shards = TokenShardDataset(tmp_path / "shk", 256, split="all")
    text = TextDataset([SHAKESPEARE], 256, split="all")
    assert len(shards) == len(text)
    for i in (0, 1, len(text) // 2, len(text) - 1):
        assert torch.equal(shards[i]["input_ids"], text[i]["input_ids"])
        assert torch.equal(shards[i]["labels"], text[i]["labels"])


def test_damaged_or_missing_shards_are_named(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="mcrnn prepare-data"):
        TokenShardDataset(tmp_path, 8)
    prepare_shards([_jsonl(tmp_path)], tmp_path / "out")
    with pytest.raises(ValueError, match="already holds token shards"):
        prepare_shards([_jsonl(tmp_path)], tmp_path / "out")
    with (tmp_path / "out" / "shard_00000.bin").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ValueError, match="shard_00000.bin has 187 bytes, the index says 93 x 2"):
        TokenShardDataset(tmp_path / "out", 8)
    prepare_shards([_jsonl(tmp_path)], tmp_path / "out", overwrite=True)
    with pytest.raises(ValueError, match="no window of seq_len"):
        TokenShardDataset(tmp_path / "out", 1000)
    assert main(["prepare-data", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "x")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_sampler_draws_each_epoch_permutation_once(monkeypatch):
    """The global batches equal their definition (``perm_e[p mod N]``, ``perm_e`` = randperm seeded with
    ``seed + e``) while ``randperm`` runs once per epoch, not once per step."""
    calls = []
    randperm = torch.randperm
    monkeypatch.setattr(torch, "randperm", lambda *a, **k: calls.append(a[0]) or randperm(*a, **k))
    sampler.epoch_permutation.cache_clear()
    n, batch, seed = 50, 8, 3
    perms = [randperm(n, generator=torch.Generator().manual_seed(seed + e)).tolist() for e in range(3)]
    calls.clear()
    for step in range(15):  # 120 samples: epochs 0, 1, 2, two batches straddling an epoch's end
        expected = [perms[p // n][p % n] for p in range(step * batch, (step + 1) * batch)]
        assert sampler.global_batch_indices(step, batch, n, seed) == expected
    assert calls == [n, n, n]


def test_training_from_shards_resumes_exactly(tmp_path):
    prepare_shards([_jsonl(tmp_path)], tmp_path / "shards")
    model = {
        "vocab_size": 257,
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_heads": 2,
        "mixer": "attention",
    }
    train = {
        "steps": 4,
        "batch_size": 4,
        "warmup_steps": 1,
        "log_every": 1,
        "progress": False,
        "save_every": 2,
    }
    data = {"type": "shards", "path": str(tmp_path / "shards"), "seq_len": 8, "val_fraction": 0.2}

    def losses(out: str, *flags: str) -> list[float]:
        cfg = tmp_path / "cfg.yaml"
        cfg.write_text(yaml.safe_dump({"model": model, "data": data, "train": {**train, "out_dir": out}}))
        assert main(["train", "--config", str(cfg), *flags]) == 0
        records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in records if "loss" in r]

    full = losses(str(tmp_path / "full"))
    losses(str(tmp_path / "part"))
    (tmp_path / "part" / "checkpoints" / "latest").write_text("step_00000002\n")
    assert losses(str(tmp_path / "part"), "--resume") == pytest.approx(full, rel=1e-6)
    evals = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_loss" in record for record in evals)  # the val split is the default eval data


def test_several_folders_read_in_order_and_must_share_a_tokenizer(tmp_path):
    """Parts of a corpus prepared in parallel train as one dataset; mixing tokenizers is refused."""
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text("".join(json.dumps({"text": doc}) + "\n" for doc in DOCS[:2]))
    second.write_text("".join(json.dumps({"text": doc}) + "\n" for doc in DOCS[2:]))
    prepare_shards([first], tmp_path / "part0")
    prepare_shards([second], tmp_path / "part1")
    joined = TokenShardDataset([tmp_path / "part0", tmp_path / "part1"], 8, split="all")
    parts = [TokenShardDataset(tmp_path / f"part{i}", 8, split="all") for i in (0, 1)]
    assert len(joined) == len(parts[0]) + len(parts[1])
    assert joined[len(parts[0])]["input_ids"].tolist() == parts[1][0]["input_ids"].tolist()
    index = json.loads((tmp_path / "part1" / "index.json").read_text())
    (tmp_path / "part1" / "index.json").write_text(json.dumps({**index, "tokenizer": "other"}))
    with pytest.raises(ValueError, match="part1 has .*'tokenizer': 'other'.*, but .*part0 has"):
        TokenShardDataset([tmp_path / "part0", tmp_path / "part1"], 8)
