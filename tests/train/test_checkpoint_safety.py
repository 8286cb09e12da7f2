"""Checkpoints never lose data: lineage-only rotation, refusal of a used out_dir, durable writes,
clear resume behaviour and one-line errors for damaged checkpoint files."""

import json
import os
from pathlib import Path

import pytest
import torch

from mcrnn.data import ByteTokenizer, MQARConfig, MQARDataset
from mcrnn.models import MCConfig, MCForCausalLM
from mcrnn.train import TrainOptions, latest_checkpoint, save_checkpoint, train
from mcrnn.train import checkpoint as ckpt_module

MODEL = {"vocab_size": 32, "hidden_size": 16, "num_hidden_layers": 1, "num_heads": 2, "mixer": "attention"}
DATA = {"vocab_size": 32, "num_pairs": 4, "seq_len": 24, "num_examples": 64, "seed": 0}


def _train(out, steps, *, resume=False, overwrite=False, model=MODEL, **kw):
    torch.manual_seed(0)
    options = TrainOptions(
        steps=steps, batch_size=4, warmup_steps=1, log_every=1, progress=False, out_dir=str(out), **kw
    )
    net = MCForCausalLM(MCConfig(**model))
    data = MQARDataset(MQARConfig(**DATA))
    start = {"resume": resume, **({"overwrite": True} if overwrite else {})}
    return train(net, data, options, eval_data=data, **start)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _steps(folder: Path) -> list[str]:
    return sorted(p.name for p in (folder / "checkpoints").glob("step_*"))


def _metric_steps(folder: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_rotation_never_deletes_other_runs_checkpoints_nor_the_new_one(tmp_path):
    """Issue 11: with step_35/step_40 of another run present, saving step_20 deleted step_20 itself."""
    config = MCConfig(**MODEL)
    state = MCForCausalLM(config).state_dict()
    for step in (35, 40):
        save_checkpoint(tmp_path, step, state, config, {"step": step}, keep=2)
    new = save_checkpoint(tmp_path, 20, state, config, {"step": 20}, keep=2)
    assert new.is_dir() and latest_checkpoint(tmp_path) == new
    assert _steps(tmp_path) == ["step_00000020", "step_00000035", "step_00000040"]
    # within the lineage the oldest goes first, and only names of the lineage are ever deleted
    lineage = json.loads((new / "run.json").read_text())["lineage"]
    third = save_checkpoint(tmp_path, 30, state, config, {"step": 30}, keep=2, lineage=lineage)
    assert _steps(tmp_path) == ["step_00000020", "step_00000030", "step_00000035", "step_00000040"]
    save_checkpoint(tmp_path, 50, state, config, {"step": 50}, keep=2, lineage=["step_00000020", third.name])
    assert _steps(tmp_path) == ["step_00000030", "step_00000035", "step_00000040", "step_00000050"]


def test_fresh_run_into_a_used_out_dir_is_refused_and_changes_nothing(tmp_path):
    _train(tmp_path, 4, save_every=2)
    before = _snapshot(tmp_path)
    with pytest.raises(ValueError, match=r"already holds a run.*--resume.*--overwrite") as err:
        _train(tmp_path, 2)
    assert "\n" not in str(err.value)
    assert _snapshot(tmp_path) == before


def test_overwrite_replaces_the_previous_run(tmp_path):
    _train(tmp_path, 4, save_every=2)
    result = _train(tmp_path, 3, overwrite=True)
    assert _steps(tmp_path) == ["step_00000003"] and latest_checkpoint(tmp_path).name == "step_00000003"
    assert [s for s in _metric_steps(tmp_path)] == [1, 2, 3, 3] and len(result.losses) == 3


def test_resume_past_the_end_does_nothing(tmp_path, capsys):
    """Issue 11: `--resume --steps 12` on a finished 20-step run deleted the checkpoint it wrote and
    appended an eval line with step 12."""
    _train(tmp_path, 20, save_every=10)
    before = _snapshot(tmp_path)
    capsys.readouterr()
    result = _train(tmp_path, 12, resume=True, save_every=10)
    assert "finished at step 20, nothing to do" in capsys.readouterr().out
    assert result.losses == [] and result.evals == [] and result.start_step == 20
    assert _snapshot(tmp_path) == before
    assert latest_checkpoint(tmp_path).name == "step_00000020"


def test_resume_says_where_it_starts(tmp_path, capsys):
    _train(tmp_path, 4, save_every=2)
    capsys.readouterr()
    result = _train(tmp_path, 6, resume=True, save_every=2)
    path = tmp_path / "checkpoints" / "step_00000004"
    assert f"resuming from step 4 ({path})" in capsys.readouterr().out
    assert result.start_step == 4 and len(result.losses) == 2
    assert _steps(tmp_path) == ["step_00000004", "step_00000006"]


def test_stale_temporary_folders_are_removed(tmp_path):
    _train(tmp_path, 2, save_every=2)
    stale = tmp_path / "checkpoints" / ".tmp-step_00000003-99999"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    _train(tmp_path, 4, resume=True, save_every=2)
    assert not stale.exists()
    assert not list((tmp_path / "checkpoints").glob(".*"))


def test_files_and_folders_are_fsynced_around_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    config = MCConfig(**MODEL)
    state = MCForCausalLM(config).state_dict()
    tokenizer = ByteTokenizer().to_hf()
    final = save_checkpoint(
        tmp_path, 7, state, config, {"step": 7}, model_class=MCForCausalLM, tokenizer=tokenizer
    )
    root = str(tmp_path / "checkpoints")
    rename = next(i for i, e in enumerate(events) if e[0] == "replace" and e[2] == str(final))
    tmp = events[rename][1]
    synced_before = {e[1] for e in events[:rename] if e[0] == "fsync"}
    written = {path.name for path in final.iterdir()}
    files = ("model.safetensors", "config.json", "trainer_state.pt", "run.json", "tokenizer.json")
    assert {*files, "configuration_mcrnn.py", "modeling_mcrnn.py"} <= written
    for name in written:  # the model code and the tokenizer files too
        assert f"{tmp}/{name}" in synced_before
    assert tmp in synced_before
    latest = next(i for i, e in enumerate(events) if e[0] == "replace" and e[2] == f"{root}/latest")
    assert ("fsync", root) in events[rename:latest]
    assert ("fsync", events[latest][1]) in events[rename:latest]
    assert ("fsync", root) in events[latest:]


def test_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path, capsys):
    _train(tmp_path, 2, save_every=2)
    metrics = tmp_path / "metrics.jsonl"
    with metrics.open("a") as handle:
        handle.write('{"step": 3, "lo')  # a kill in the middle of a write
    _train(tmp_path, 3, resume=True, save_every=2)
    err = capsys.readouterr().err
    assert "torn last line" in err and str(metrics) in err
    assert _metric_steps(tmp_path) == [1, 2, 2, 3, 3]  # train and eval lines of steps 1..3


def test_bad_metrics_line_before_the_last_is_an_error_naming_it(tmp_path):
    from mcrnn.train.metrics import read_metrics

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(ValueError, match=f"invalid JSON at {metrics}:2"):
        read_metrics(metrics)


def test_loss_plot_next_to_metrics(tmp_path, monkeypatch, capsys):
    _train(tmp_path, 2)
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a)
    )
    _train(tmp_path / "no_plot", 1)
    assert "matplotlib is not installed" in capsys.readouterr().err
    assert not (tmp_path / "no_plot" / "loss.png").exists()


def test_resume_with_a_changed_model_names_the_keys(tmp_path):
    _train(tmp_path, 2)
    with pytest.raises(ValueError, match=r"differs from the checkpoint's.*hidden_size \(16 -> 32\)") as err:
        _train(tmp_path, 4, resume=True, model={**MODEL, "hidden_size": 32})
    assert "\n" not in str(err.value)


def _state_file(tmp_path) -> Path:
    _train(tmp_path, 2)
    return latest_checkpoint(tmp_path) / "trainer_state.pt"


def test_trainer_state_without_optimizer(tmp_path):
    file = _state_file(tmp_path)
    state = torch.load(file, weights_only=True)
    del state["optimizer"]
    torch.save(state, file)
    with pytest.raises(ValueError, match=r"trainer_state.pt lacks \['optimizer'\]"):
        _train(tmp_path, 4, resume=True)


@pytest.mark.parametrize("content", ["garbage", "unsafe pickle"])
def test_garbage_trainer_state_is_one_line_without_torch_advice(tmp_path, content):
    file = _state_file(tmp_path)
    if content == "garbage":
        file.write_bytes(b"this is not a checkpoint")
    else:  # torch's refusal of a non-allowed global repeats its weights_only=False advice
        import argparse

        torch.save({"step": 2, "optimizer": argparse.Namespace(lr=1)}, file)
    with pytest.raises(ValueError, match="corrupt trainer state") as err:
        _train(tmp_path, 4, resume=True)
    assert str(file) in str(err.value) and "\n" not in str(err.value)
    assert "weights_only=False" not in str(err.value)


def test_empty_latest_file_is_named(tmp_path):
    _train(tmp_path, 2)
    (tmp_path / "checkpoints" / "latest").write_text("")
    with pytest.raises(ValueError, match=r"checkpoints/latest is empty"):
        _train(tmp_path, 4, resume=True)
    with pytest.raises(ValueError, match="latest is empty"):
        ckpt_module.latest_checkpoint(tmp_path)
