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
from mcrnn.train import TrainOptions, latest_checkpoint, lr_factor, read_checkpoint, train
from mcrnn.train import checkpoint as ckpt_module

MODEL = {"vocab_size": 32, "hidden_size": 32, "num_hidden_layers": 1, "num_heads": 2, "mixer": "attention"}
DATA = {"vocab_size": 32, "num_pairs": 4, "seq_len": 24, "num_examples": 64, "seed": 0}


def _run(tmp, steps, resume=False, **kw):
    torch.manual_seed(0)
    model = MCForCausalLM(MCConfig(**MODEL))
    options = TrainOptions(
        steps=steps, batch_size=8, micro_batch_size=4, warmup_steps=2, log_every=1, progress=False,
        out_dir=str(tmp), **kw,
    )
    return model, train(model, MQARDataset(MQARConfig(**DATA)), options, resume=resume)


def test_resume_reproduces_uninterrupted_losses(tmp_path):
    _, full = _run(tmp_path / "full", 6, save_every=3)
    _run(tmp_path / "part", 6, save_every=3)
    # simulate a run stopped after step 3: point "latest" back at the step-3 checkpoint
    (tmp_path / "part" / "checkpoints" / "latest").write_text("step_00000003\n")
    _, resumed = _run(tmp_path / "part", 6, resume=True, save_every=3)
    assert resumed.start_step == 3
    assert resumed.losses == pytest.approx(full.losses[3:], rel=1e-6, abs=1e-7)
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 4, 5, 6]


def test_loss_decreases_and_schedule():
    torch.manual_seed(0)
    model = MCForCausalLM(MCConfig(**MODEL))
    opts = TrainOptions(steps=30, batch_size=16, lr=3e-3, warmup_steps=3, progress=False)
    result = train(model, MQARDataset(MQARConfig(**DATA)), opts)
    assert result.losses[-1] < result.losses[0]
    assert lr_factor(0, opts) == pytest.approx(1 / 3) and lr_factor(29, opts) == pytest.approx(0.1, abs=0.01)


def test_interrupted_save_keeps_last_complete_checkpoint(tmp_path, monkeypatch):
    _run(tmp_path, 2, save_every=2)
    good = latest_checkpoint(tmp_path)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_module, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, 4, resume=True, save_every=2)
    assert latest_checkpoint(tmp_path) == good
    weights, state = read_checkpoint(good, tie_word_embeddings=True)
    assert state["step"] == 2 and "lm_head.weight" in weights


def test_corrupt_or_missing_checkpoint_is_a_clear_error(tmp_path):
    model, _ = _run(tmp_path, 1)
    path = latest_checkpoint(tmp_path)
    (path / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="corrupt model weights"):
        _run(tmp_path, 2, resume=True)
    (path / "trainer_state.pt").unlink()
    with pytest.raises(FileNotFoundError, match="trainer_state.pt"):
        read_checkpoint(path, tie_word_embeddings=True)


def test_checkpoint_loads_with_from_pretrained(tmp_path):
    model, _ = _run(tmp_path, 1)
    loaded = MCForCausalLM.from_pretrained(latest_checkpoint(tmp_path)).eval()
    ids = torch.randint(0, 32, (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model.eval()(ids).logits)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"steps": 0}, "steps"),
        ({"lr": 0}, "lr"),
        ({"precision": "fp8"}, "precision"),
        ({"betas": (1.5, 0.9)}, "betas"),
        ({"eps": 0.0}, "eps"),
        ({"lr": "fast"}, "lr must be a number"),
    ],
)
def test_bad_options(kwargs, field):
    with pytest.raises(ValueError, match=field):
        TrainOptions(**kwargs)


def test_vocab_smaller_than_data_is_rejected():
    model = MCForCausalLM(MCConfig(**{**MODEL, "vocab_size": 16}))
    with pytest.raises(ValueError, match="vocab_size"):
        train(model, MQARDataset(MQARConfig(**DATA)), TrainOptions(steps=1, batch_size=2, progress=False))


def _cli_losses(tmp, nproc, parallel="ddp", resume=False, save_every=0):
    cfg = {
        "model": MODEL,
        "data": {"type": "mqar", **DATA},
        "train": {"steps": 4, "batch_size": 8, "micro_batch_size": 2, "warmup_steps": 1, "log_every": 1,
                  "progress": False, "out_dir": str(tmp / "run"), "parallel": parallel,
                  "save_every": save_every},
    }
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = (
        ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else []
    )
    cmd = [sys.executable, *launcher, "-m", "mcrnn", "train", "--config", str(tmp / "cfg.yaml")]
    cmd += ["--resume"] if resume else []
    proc = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (tmp / "run" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x)["loss"] for x in lines if "loss" in json.loads(x)]


@pytest.mark.slow
def test_ddp_two_gloo_processes_match_one_process(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    single = _cli_losses(tmp_path / "one", 1)
    double = _cli_losses(tmp_path / "two", 2)
    assert len(single) == len(double) == 4
    assert double == pytest.approx(single, rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_fsdp2_two_gloo_processes_match_one_process_checkpoint_and_resume(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    single = _cli_losses(tmp_path / "one", 1)
    sharded = _cli_losses(tmp_path / "two", 2, parallel="fsdp", save_every=2)
    assert sharded == pytest.approx(single, rel=1e-5, abs=1e-6)
    (tmp_path / "two" / "run" / "checkpoints" / "latest").write_text("step_00000002\n")
    resumed = _cli_losses(tmp_path / "two", 2, parallel="fsdp", resume=True, save_every=2)
    assert resumed == pytest.approx(single, rel=1e-5, abs=1e-6)  # steps 1-2 kept, 3-4 recomputed
    one = MCForCausalLM.from_pretrained(latest_checkpoint(tmp_path / "one" / "run"))
    two = MCForCausalLM.from_pretrained(latest_checkpoint(tmp_path / "two" / "run"))
    for (name, a), b in zip(one.state_dict().items(), two.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)


def test_collate_pads_on_the_right():
    from mcrnn.train.sampler import collate

    data = [{"input_ids": torch.tensor([5, 6, 7]), "labels": torch.tensor([6, 7, 8])},
            {"input_ids": torch.tensor([1]), "labels": torch.tensor([2])}]
    batch = collate(data, [0, 1])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [1, 0, 0]]
    assert batch["labels"].tolist() == [[6, 7, 8], [2, -100, -100]]
