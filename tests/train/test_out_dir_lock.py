"""One training per out_dir (issue 23.2): a live run's lock refuses a second run in one line naming the
folder and the holder; a dead run's lock is taken over with a warning; the lock goes when the run ends,
by an exception or Ctrl-C too."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import yaml

from mcrnn.cli import main
from mcrnn.data import MQARConfig, MQARDataset
from mcrnn.models import MCConfig, MCForCausalLM
from mcrnn.train import TrainOptions, train
from mcrnn.train import loop as loop_module
from mcrnn.train.lock import LOCK_FILE, OutDirBusy

MODEL = {"vocab_size": 32, "hidden_size": 16, "num_hidden_layers": 1, "num_heads": 2, "mixer": "attention"}
DATA = {"vocab_size": 32, "num_pairs": 4, "seq_len": 24, "num_examples": 16, "seed": 0}
HOLDER = """
import sys, time
from mcrnn.train.lock import OutDirLock
with OutDirLock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def _train(out, steps=2, **kw):
    torch.manual_seed(0)
    options = TrainOptions(steps=steps, batch_size=2, warmup_steps=0, progress=False, out_dir=str(out))
    return train(MCForCausalLM(MCConfig(**MODEL)), MQARDataset(MQARConfig(**DATA)), options, **kw)


@pytest.fixture
def held(tmp_path):
    """``tmp_path / "run"`` held by a live process; yields (folder, the holder's pid)."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        yield out, holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_a_second_live_run_is_refused_in_one_line_and_writes_nothing(held):
    out, pid = held
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(OutDirBusy) as caught:
        _train(out)
    message = str(caught.value)
    assert message.startswith(
        f"out_dir {out} is in use by another training (pid {pid}@{socket.gethostname()}, "
    )
    assert "\n" not in message
    assert sorted(p.name for p in out.iterdir()) == before == [LOCK_FILE]  # no metrics, no checkpoints
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == pid  # the holder keeps its lock
    with pytest.raises(OutDirBusy):
        _train(out, resume=True)  # resuming is no way around it


def test_the_cli_refuses_a_held_out_dir_before_reading_data(held, capsys):
    out, pid = held
    config = out.parent / "cfg.yaml"
    data = {"type": "text", "paths": [str(out.parent / "missing.txt")], "seq_len": 8}
    train_section = {"steps": 1, "batch_size": 2, "progress": False, "out_dir": str(out)}
    config.write_text(yaml.safe_dump({"model": MODEL, "data": data, "train": train_section}))
    assert main(["train", "--config", str(config), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"mcrnn train: error: out_dir {out} is in use by another training (pid {pid}@"), err
    assert "\n" not in err


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "run"
    out.mkdir()
    record = {"pid": dead.pid, "host": socket.gethostname(), "started": "2026-01-01T00:00:00+0000"}
    (out / LOCK_FILE).write_text(json.dumps(record) + "\n")
    result = _train(out)
    assert len(result.losses) == 2 and result.checkpoint is not None
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    holder = f"pid {dead.pid}@{socket.gethostname()}, started 2026-01-01T00:00:00+0000"
    assert warnings == [f"warning: taking over the stale lock of {out} ({holder})"]
    assert not (out / LOCK_FILE).exists()  # released at the end


def test_a_lock_from_another_host_is_not_taken_over(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "x"}))
    with pytest.raises(OutDirBusy, match=r"\(pid 1@elsewhere, started x\)"):
        _train(out)


@pytest.mark.parametrize("error", [RuntimeError("boom at step 1"), KeyboardInterrupt()])
def test_the_lock_is_held_during_the_run_and_released_after_an_exception(tmp_path, monkeypatch, error):
    out = tmp_path / "run"
    seen = []
    step = loop_module._optimizer_step

    def failing_step(run, index):
        seen.append(json.loads((out / LOCK_FILE).read_text()))
        if index == 1:
            raise error
        return step(run, index)

    monkeypatch.setattr(loop_module, "_optimizer_step", failing_step)
    with pytest.raises(type(error)):
        _train(out, steps=3)
    assert [record["pid"] for record in seen] == [os.getpid(), os.getpid()]
    assert seen[0]["host"] == socket.gethostname() and seen[0]["started"]
    assert not (out / LOCK_FILE).exists()
    monkeypatch.setattr(loop_module, "_optimizer_step", step)
    assert len(_train(out, steps=3, overwrite=True).losses) == 3  # the folder is free again
