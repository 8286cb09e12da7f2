"""Checkpoints trained from token shards carry the tokenizer the shards' index records (issue 23.4), so
``AutoTokenizer.from_pretrained(checkpoint)`` works straight away; a validation split of one window
warns with its numbers."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from mcrnn.data import ByteTokenizer
from mcrnn.models import MCConfig, MCForCausalLM
from mcrnn.train import TrainOptions, train
from mcrnn.train.data_shards import TokenShardDataset, prepare_shards

TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. " * 4
MODEL = {"hidden_size": 16, "num_hidden_layers": 1, "num_heads": 2, "mixer": "attention"}


def _train_from_shards(folder, out, vocab_size: int) -> str:
    data = TokenShardDataset(folder, 8, val_fraction=0.2)
    torch.manual_seed(0)
    model = MCForCausalLM(MCConfig(vocab_size=vocab_size, **MODEL))
    options = TrainOptions(steps=2, batch_size=2, warmup_steps=0, progress=False, out_dir=str(out))
    return train(model, data, options).checkpoint


def test_a_checkpoint_from_byte_shards_loads_its_tokenizer(tmp_path):
    (tmp_path / "corpus.txt").write_text(TEXT)
    index = prepare_shards([tmp_path / "corpus.txt"], tmp_path / "shards")
    assert index["tokenizer"] == "byte"
    checkpoint = _train_from_shards(tmp_path / "shards", tmp_path / "run", 257)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    text = "whether 'tis nobler"
    assert tokenizer.encode(text, add_special_tokens=False) == ByteTokenizer().encode(text)
    assert tokenizer.eos_token_id == index["eos_id"] == 256
    config = json.loads((tmp_path / "run" / "checkpoints" / "step_00000002" / "config.json").read_text())
    assert config["eos_token_id"] == 256  # generation stops at the documents' end


def test_a_checkpoint_from_shards_of_a_local_hugging_face_tokenizer_carries_it(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast

    words = sorted(set(TEXT.split()))
    vocab = {"[UNK]": 0, "</s>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    source = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="[UNK]")
    source.save_pretrained(tmp_path / "tok")
    (tmp_path / "corpus.txt").write_text(TEXT)
    prepare_shards([tmp_path / "corpus.txt"], tmp_path / "shards", tokenizer=str(tmp_path / "tok"))
    checkpoint = _train_from_shards(tmp_path / "shards", tmp_path / "run", len(vocab))
    loaded = AutoTokenizer.from_pretrained(checkpoint)
    assert loaded.get_vocab() == source.get_vocab()
    assert loaded.encode("that is the question:") == [vocab[w] for w in "that is the question:".split()]


def test_a_val_split_of_one_window_warns_with_its_numbers(tmp_path, capsys):
    (tmp_path / "corpus.txt").write_text(TEXT)
    prepare_shards([tmp_path / "corpus.txt"], tmp_path / "shards")  # 349 tokens: 43 windows of 8 + 1
    capsys.readouterr()
    TokenShardDataset(tmp_path / "shards", 8, split="train")
    TokenShardDataset(tmp_path / "shards", 8, split="val", val_fraction=0.1)  # 4 windows: no warning
    assert capsys.readouterr().err == ""
    assert len(TokenShardDataset(tmp_path / "shards", 8, split="val")) == 1  # the default fraction, 0.001
    assert capsys.readouterr().err.splitlines() == [
        f"warning: the val split of {tmp_path / 'shards'} is 1 window of 8 tokens (val_fraction=0.001 of 43 "
        "windows): its loss and perplexity are noise; raise val_fraction or add data"
    ]


def test_shards_whose_tokenizer_is_gone_train_with_a_warning(tmp_path, capsys):
    from transformers import PreTrainedTokenizerFast

    source = ByteTokenizer().to_hf()
    assert isinstance(source, PreTrainedTokenizerFast)
    source.save_pretrained(tmp_path / "tok")
    (tmp_path / "corpus.txt").write_text(TEXT)
    prepare_shards([tmp_path / "corpus.txt"], tmp_path / "shards", tokenizer=str(tmp_path / "tok"))
    for file in (tmp_path / "tok").iterdir():
        file.unlink()
    (tmp_path / "tok").rmdir()
    capsys.readouterr()
    checkpoint = _train_from_shards(tmp_path / "shards", tmp_path / "run", 257)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: checkpoints will carry no tokenizer (")
    assert not list(Path(checkpoint).glob("tokenizer*"))
