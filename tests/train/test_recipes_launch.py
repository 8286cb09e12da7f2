"""The launch of a paper recipe: activation checkpointing recomputes every block, and a paper config, cut
to a small width and length, trains for 2 steps from prepared shards on 2 gloo processes with FSDP2,
bf16 autocast and activation checkpointing (the multi-node command of docs/scaling.md on one machine)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mcrnn.data import MQARConfig, MQARDataset
from mcrnn.models import MCConfig, MCForCausalLM
from mcrnn.models.modeling_mcrnn import SwiGLU
from mcrnn.train import TrainOptions, latest_checkpoint, train
from mcrnn.train.config import build_dataset, load_config
from mcrnn.train.data_shards import prepare_shards

ROOT = Path(__file__).parents[2]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
SMALL = {"vocab_size": 257, "hidden_size": 32, "num_hidden_layers": 2, "num_heads": 2, "segment_size": 16}


def _prepared_shards(tmp_path: Path) -> Path:
    """Shards of tinyshakespeare when ``../shared/data`` has it, else of a generated text."""
    source = SHAKESPEARE
    if not source.is_file():
        source = tmp_path / "text.txt"
        source.write_text(
            "".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(400))
        )
    prepare_shards([source], tmp_path / "shards")
    return tmp_path / "shards"


def test_activation_checkpointing_recomputes_each_block_with_the_same_losses(monkeypatch):
    calls = []
    forward = SwiGLU.forward
    monkeypatch.setattr(SwiGLU, "forward", lambda self, x: calls.append(1) or forward(self, x))
    data = MQARDataset(MQARConfig(vocab_size=32, num_pairs=4, seq_len=32, num_examples=16, seed=0))
    runs = {}
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = MCForCausalLM(
            MCConfig(**{**SMALL, "vocab_size": 32, "memory": "titans", "aggregation": "grm"})
        )
        options = TrainOptions(
            steps=2, batch_size=4, micro_batch_size=2, warmup_steps=1, progress=False,
            activation_checkpointing=checkpointing,
        )
        calls.clear()
        runs[checkpointing] = train(model, data, options).losses
        # 2 steps x 2 micro-batches x 2 blocks, twice when the backward recomputes each block
        assert len(calls) == (16 if checkpointing else 8)
    assert runs[True] == runs[False]


def test_activation_checkpointing_needs_a_model_that_supports_it():
    with pytest.raises(ValueError, match="activation_checkpointing: Linear does not support it"):
        train(torch.nn.Linear(2, 2), [], TrainOptions(steps=1, batch_size=1, activation_checkpointing=True))
    with pytest.raises(ValueError, match="activation_checkpointing must be true or false"):
        TrainOptions(activation_checkpointing="yes")


def test_paper_data_section_reads_prepared_shards(tmp_path):
    raw = load_config(ROOT / "configs" / "paper" / "1.3b" / "transformer.yaml")
    data = build_dataset({**raw["data"], "path": str(_prepared_shards(tmp_path))})
    assert data.seq_len == 4096 and len(data) >= 1 and data[0]["input_ids"].shape == (4096,)


@pytest.mark.slow
def test_paper_config_dry_run_two_gloo_processes_fsdp2_bf16_checkpointing(tmp_path):
    raw = load_config(ROOT / "configs" / "paper" / "760m" / "titans_grm.yaml")
    raw["model"].update(SMALL)  # the paper's mixer (Titans + GRM) at a small width, depth and segment
    raw["data"].update(path=str(_prepared_shards(tmp_path)), seq_len=64)
    raw["train"].update(
        steps=2, batch_size=4, micro_batch_size=1, warmup_steps=1, log_every=1, eval_every=0, eval_batches=1,
        save_every=0, out_dir=str(tmp_path / "run"),
    )
    assert (raw["train"]["parallel"], raw["train"]["precision"]) == ("fsdp", "bf16")
    assert raw["train"]["activation_checkpointing"] is True
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        "--nproc_per_node=2",
    ]
    command += ["-m", "mcrnn", "train", "--config", str(tmp_path / "cfg.yaml")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 2 and all(4.0 < loss < 6.5 for loss in losses)  # about ln(257) = 5.55 at init
    assert any("eval_loss" in r for r in records)  # the shards' val split
    model = MCForCausalLM.from_pretrained(latest_checkpoint(tmp_path / "run"))
    assert (model.config.memory, model.config.aggregation, model.config.hidden_size) == ("titans", "grm", 32)
