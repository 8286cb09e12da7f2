"""YAML configs: numbers as PyYAML reads them, and one-line errors naming the key for unknown, missing
and changed keys (through ``mcrnn train``, as a user meets them)."""

import pytest
import yaml

from mcrnn.cli import main
from mcrnn.models import MCConfig
from mcrnn.train import TrainOptions

MODEL = {"vocab_size": 32, "hidden_size": 16, "num_hidden_layers": 1, "num_heads": 2, "mixer": "attention"}
DATA = {"type": "mqar", "vocab_size": 32, "num_pairs": 4, "seq_len": 24, "num_examples": 16}
TRAIN = {"steps": 1, "batch_size": 2, "warmup_steps": 0, "progress": False}


def _train(tmp_path, capsys, *flags, model=MODEL, data=DATA, train=TRAIN):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"model": model, "data": data, "train": train}))
    capsys.readouterr()
    code = main(["train", "--config", str(path), *flags])
    return code, capsys.readouterr()


def _one_line_error(code, captured) -> str:
    assert code == 2, captured.err
    err = captured.err.strip()
    assert err.startswith("mcrnn train: error: ") and "\n" not in err, err
    return err


def test_exponent_without_dot_is_a_float(tmp_path, capsys):
    """PyYAML reads `1e-3` as the string '1e-3'; it was a TypeError traceback."""
    path = tmp_path / "cfg.yaml"
    text = yaml.safe_dump({"model": MODEL, "data": DATA, "train": TRAIN})
    path.write_text(text + "  lr: 1e-3\n  eps: 1e-8\n")  # the train section is last
    raw = yaml.safe_load(path.read_text())
    assert raw["train"]["lr"] == "1e-3"  # what PyYAML hands over
    assert main(["train", "--config", str(path)]) == 0, capsys.readouterr().err
    from mcrnn.train.config import build_model_config

    assert build_model_config({**MODEL, "norm_eps": "1e-5"}).norm_eps == 1e-5


def test_non_number_lr_is_named(tmp_path, capsys):
    err = _one_line_error(*_train(tmp_path, capsys, train={**TRAIN, "lr": "fast"}))
    assert "lr must be a number, got 'fast'" in err


def test_unknown_data_key(tmp_path, capsys):
    data = {**DATA, "seq_length": 24}
    err = _one_line_error(*_train(tmp_path, capsys, data=data))
    assert "data (type 'mqar'): unknown key 'seq_length'; did you mean 'seq_len'?" in err


def test_missing_data_key(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("hello world " * 200)
    err = _one_line_error(*_train(tmp_path, capsys, data={"type": "text", "paths": [str(text)]}))
    assert "data (type 'text'): missing required key(s) ['seq_len']" in err


def test_unknown_model_key_names_the_closest(tmp_path, capsys):
    """A misspelt model key used to be kept silently (PretrainedConfig accepts any keyword)."""
    err = _one_line_error(*_train(tmp_path, capsys, model={**MODEL, "segment_sise": 64}))
    assert "model: unknown key 'segment_sise'; did you mean 'segment_size'?" in err


def test_model_keys_follow_mcconfig(monkeypatch):
    """Valid keys come from MCConfig itself, so a field added to it is accepted without a list here."""
    import inspect

    from mcrnn.train.config import model_keys

    params = set(inspect.signature(MCConfig.__init__).parameters) - {"self", "kwargs"}
    assert params <= model_keys()
    real = MCConfig.to_dict
    monkeypatch.setattr(MCConfig, "to_dict", lambda self: {**real(self), "brand_new_field": 1})
    assert "brand_new_field" in model_keys()


def test_resume_with_a_changed_model_section(tmp_path, capsys):
    train = {**TRAIN, "out_dir": str(tmp_path / "run")}
    assert _train(tmp_path, capsys, train=train)[0] == 0
    changed = {**MODEL, "hidden_size": 32, "num_hidden_layers": 2}
    err = _one_line_error(*_train(tmp_path, capsys, "--resume", "--steps", "2", model=changed, train=train))
    assert "differs from the checkpoint's" in err
    assert "hidden_size (16 -> 32)" in err and "num_hidden_layers (1 -> 2)" in err


def test_fresh_run_into_a_used_out_dir_via_the_cli(tmp_path, capsys):
    train = {**TRAIN, "out_dir": str(tmp_path / "run")}
    assert _train(tmp_path, capsys, train=train)[0] == 0
    err = _one_line_error(*_train(tmp_path, capsys, train=train))
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    code, captured = _train(tmp_path, capsys, "--resume", train=train)
    assert code == 0 and "finished at step 1, nothing to do" in captured.out
    assert _train(tmp_path, capsys, "--overwrite", train=train)[0] == 0


@pytest.mark.parametrize("flags", [["--steps", "0"], ["--resume", "--overwrite"]])
def test_bad_train_flags(tmp_path, capsys, flags):
    with pytest.raises(SystemExit) as stop:
        _train(tmp_path, capsys, *flags)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mcrnn train: error: argument") and "\n" not in err


def test_unknown_train_key_names_the_closest_not_every_key(tmp_path, capsys):
    err = _one_line_error(*_train(tmp_path, capsys, train={**TRAIN, "warmup_step": 0}))
    assert err == "mcrnn train: error: train: unknown key 'warmup_step'; did you mean 'warmup_steps'?"
    err = _one_line_error(*_train(tmp_path, capsys, train={**TRAIN, "xyzzy": 0}))
    count = len(TrainOptions().to_dict())
    assert err.endswith(f"train: unknown key 'xyzzy'; no valid key is close to it (there are {count})")


def test_unknown_section_names_the_closest(tmp_path, capsys):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"model": MODEL, "data": DATA, "trian": TRAIN}))
    err = _one_line_error(main(["train", "--config", str(path)]), capsys.readouterr())
    assert err == f"mcrnn train: error: {path}: unknown key 'trian'; did you mean 'train'?"


def test_resume_without_a_checkpoint_is_an_error(tmp_path, capsys):
    """`--resume` into an empty (or checkpoint-less) folder used to start afresh without a word."""
    train = {**TRAIN, "out_dir": str(tmp_path / "run")}
    err = _one_line_error(*_train(tmp_path, capsys, "--resume", train=train))
    assert err == (
        f"mcrnn train: error: nothing to resume: {tmp_path / 'run'} holds no complete checkpoint; start "
        "without resume (--resume), with overwrite (--overwrite) if it holds an earlier run's files"
    )
    assert not (tmp_path / "run").exists()


def test_resume_with_a_changed_data_section_is_refused_unless_allowed(tmp_path, capsys):
    train = {**TRAIN, "out_dir": str(tmp_path / "run")}
    assert _train(tmp_path, capsys, train=train)[0] == 0
    changed = {**DATA, "num_examples": 32, "seed": 5}
    err = _one_line_error(*_train(tmp_path, capsys, "--resume", "--steps", "2", data=changed, train=train))
    run_json = tmp_path / "run" / "checkpoints" / "step_00000001" / "run.json"
    assert err == (
        f"mcrnn train: error: the data section differs from the checkpoint's ({run_json}) in num_examples "
        "(16 -> 32), seed (None -> 5); restore it, or continue on the new data with allow_data_change "
        "(--allow-data-change)"
    )
    assert _train(tmp_path, capsys, "--resume", "--steps", "2", data=DATA, train=train)[0] == 0  # unchanged
    flags = ["--resume", "--steps", "3", "--allow-data-change"]
    code, captured = _train(tmp_path, capsys, *flags, data=changed, train=train)
    assert code == 0, captured.err
