"""A full disk during a checkpoint (issue 23.3): one line naming the step, the folder and the last
complete checkpoint; the temporary folder removed, ``latest`` untouched. The full disk is injected as
each writer reports it: OSError ENOSPC, and torch.save's ``inline_container`` RuntimeError."""

import errno

import pytest
import torch

from mcrnn.data import MQARConfig, MQARDataset
from mcrnn.models import MCConfig, MCForCausalLM
from mcrnn.train import TrainOptions, latest_checkpoint, save_checkpoint, train
from mcrnn.train import checkpoint as ckpt_module
from mcrnn.train.checkpoint import DiskFullError

MODEL = {"vocab_size": 32, "hidden_size": 16, "num_hidden_layers": 1, "num_heads": 2, "mixer": "attention"}
DATA = {"vocab_size": 32, "num_pairs": 4, "seq_len": 24, "num_examples": 16, "seed": 0}
FULL_DISK = {
    "safetensors ENOSPC": ("save_file", OSError(errno.ENOSPC, "No space left on device")),
    "torch.save unexpected pos": (
        "torch.save",
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4288 vs 4180"),
    ),
    "torch.save file write failed": (
        "torch.save",
        RuntimeError(
            "[enforce fail at inline_container.cc:858] . PytorchStreamWriter failed: file write failed"
        ),
    ),
    "latest ENOSPC": ("atomic_write_text", OSError(errno.ENOSPC, "No space left on device")),
}


def _fill_disk(monkeypatch, where: str, error: BaseException) -> None:
    def full(*args, **kwargs):
        raise error

    if where == "torch.save":
        monkeypatch.setattr(torch, "save", full)
    else:
        monkeypatch.setattr(ckpt_module, where, full)


def _saved_files(root):
    return sorted(p.name for p in root.iterdir())


@pytest.mark.parametrize("case", FULL_DISK)
def test_a_full_disk_names_the_step_and_the_last_complete_checkpoint(tmp_path, monkeypatch, case):
    config = MCConfig(**MODEL)
    state = MCForCausalLM(config).state_dict()
    first = save_checkpoint(tmp_path, 2, state, config, {"step": 2})
    _fill_disk(monkeypatch, *FULL_DISK[case])
    with pytest.raises(DiskFullError) as caught:
        save_checkpoint(tmp_path, 4, state, config, {"step": 4}, lineage=[first.name])
    root = tmp_path / "checkpoints"
    assert str(caught.value) == (
        f"no space left on device while writing checkpoint step 4 to {root / 'step_00000004'}; the last "
        f"complete checkpoint is step 2 ({first})"
    )
    assert caught.value.errno is None and isinstance(caught.value, OSError)  # one line in the CLI
    assert _saved_files(root) == ["latest", "step_00000002"]  # no temporary folder, no step 4
    assert latest_checkpoint(tmp_path) == first


def test_a_full_disk_at_the_first_checkpoint_says_none(tmp_path, monkeypatch):
    config = MCConfig(**MODEL)
    _fill_disk(monkeypatch, *FULL_DISK["torch.save unexpected pos"])
    with pytest.raises(
        DiskFullError, match=r"step 3 to .*step_00000003; the last complete checkpoint is none$"
    ):
        save_checkpoint(tmp_path, 3, MCForCausalLM(config).state_dict(), config, {"step": 3})
    assert _saved_files(tmp_path / "checkpoints") == []


def test_other_write_errors_are_not_called_a_full_disk(tmp_path, monkeypatch):
    config = MCConfig(**MODEL)
    _fill_disk(monkeypatch, "torch.save", PermissionError(errno.EACCES, "Permission denied"))
    with pytest.raises(PermissionError):
        save_checkpoint(tmp_path, 3, MCForCausalLM(config).state_dict(), config, {"step": 3})
    assert _saved_files(tmp_path / "checkpoints") == []  # the temporary folder is removed all the same


def test_training_stops_at_a_full_disk_with_the_clear_error(tmp_path, monkeypatch):
    real_save = torch.save
    calls = []

    def save_once(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) > 1:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_once)
    options = TrainOptions(
        steps=4, batch_size=2, warmup_steps=0, save_every=2, progress=False, out_dir=str(tmp_path)
    )
    model = MCForCausalLM(MCConfig(**MODEL))
    with pytest.raises(
        DiskFullError, match=r"writing checkpoint step 4 to .*; the last complete checkpoint is step 2 "
    ):
        train(model, MQARDataset(MQARConfig(**DATA)), options)
    assert _saved_files(tmp_path / "checkpoints") == ["latest", "step_00000002"]
    assert not (tmp_path / "train.lock").exists()
