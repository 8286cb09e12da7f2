"""Saved folders are self-contained: a process that never imported mcrnn loads the model with
``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` and the byte tokenizer with
``AutoTokenizer.from_pretrained(folder)``, from ``save_pretrained`` and from training checkpoints."""

import json

import torch
from fresh_process import load_in_fresh_process

from mcrnn.data import ByteTokenizer, TextDataset
from mcrnn.models import MCConfig, MCForCausalLM
from mcrnn.train import TrainOptions, latest_checkpoint, train

TINY = {"vocab_size": 257, "hidden_size": 32, "num_hidden_layers": 2, "num_heads": 2, "chunk_size": 4}
TEXT = "Grüße, 世界! naïve café 😀\n"


def _check_fresh_load(folder, model, work):
    ids = torch.randint(0, 257, (2, 19), generator=torch.Generator().manual_seed(1))
    result = load_in_fresh_process(folder, TEXT, ids, work)
    with torch.no_grad():
        assert torch.equal(result["logits"], model.eval()(ids).logits)
    assert result["ids"] == ByteTokenizer().encode(TEXT)
    assert result["eos"] == result["pad"] == ByteTokenizer.eos_id


def test_save_pretrained_folder_loads_without_mcrnn(tmp_path):
    torch.manual_seed(0)
    model = MCForCausalLM(MCConfig(**TINY, memory="titans", segment_size=8, memory_expansion=2))
    model.save_pretrained(tmp_path / "saved")
    ByteTokenizer().to_hf().save_pretrained(tmp_path / "saved")
    auto_map = json.loads((tmp_path / "saved" / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_mcrnn.MCConfig",
        "AutoModelForCausalLM": "modeling_mcrnn.MCForCausalLM",
    }
    _check_fresh_load(tmp_path / "saved", model, tmp_path)


def test_training_checkpoint_loads_without_mcrnn_and_resumes(tmp_path):
    torch.manual_seed(0)
    (tmp_path / "corpus.txt").write_text(TEXT * 40, encoding="utf-8")
    model = MCForCausalLM(MCConfig(**TINY, segment_size=4, aggregation="grm"))
    data = TextDataset(tmp_path / "corpus.txt", seq_len=32, split="all")
    options = {
        "batch_size": 2,
        "warmup_steps": 1,
        "save_every": 1,
        "progress": False,
        "out_dir": str(tmp_path),
    }
    train(model, data, TrainOptions(steps=2, **options))
    # resuming compares the checkpoint's config with a fresh model's: neither auto_map nor the end of
    # document the tokenizer gave the config (generation stops there) is a difference
    fresh = MCForCausalLM(MCConfig(**TINY, segment_size=4, aggregation="grm"))
    assert train(fresh, data, TrainOptions(steps=3, **options), resume=True).start_step == 2
    checkpoint = latest_checkpoint(tmp_path)
    saved = json.loads((checkpoint / "config.json").read_text())
    assert saved["eos_token_id"] == saved["pad_token_id"] == ByteTokenizer.eos_id
    written = {path.name for path in checkpoint.iterdir()}
    assert {
        "configuration_mcrnn.py",
        "modeling_mcrnn.py",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= written
    _check_fresh_load(checkpoint, fresh, tmp_path)
