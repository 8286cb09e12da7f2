"""The ``mcrnn`` command line: one-line errors (a traceback only with ``--debug``), arguments checked
before any work, ``eval`` / ``bench`` doing what their flags say, help text and one list syntax."""

import json

import pytest
import torch

from mcrnn.cli import COMMANDS, main
from mcrnn.models import MCConfig, MCForCausalLM

TINY = {"vocab_size": 257, "hidden_size": 16, "num_hidden_layers": 1, "num_heads": 2, "chunk_size": 8}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny byte-level model saved with save_pretrained (records no training data)."""
    path = tmp_path_factory.mktemp("model") / "m"
    torch.manual_seed(0)
    MCForCausalLM(MCConfig(**TINY, segment_size=None)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "t.txt"
    path.write_text(" ".join(f"word{i % 37}" for i in range(800)))
    return path


def _run(capsys, *argv):
    capsys.readouterr()
    code = main([str(a) for a in argv])
    return code, capsys.readouterr()


def _error(code, captured, command) -> str:
    """The one stderr line of a failed command."""
    assert code == 2, captured.err
    err = captured.err.strip()
    assert err.startswith(f"mcrnn {command}: error: ") and "\n" not in err, err
    return err


def _argparse_error(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as stop:
        main([str(a) for a in argv])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    return err


# eval: arguments ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["-3", "0"])
def test_eval_batch_size_must_be_positive(capsys, model_dir, text_file, tmp_path, value):
    """It reported perplexity 1 and exited 0 for -3; 0 was a ZeroDivisionError."""
    err = _argparse_error(
        capsys, "eval", "--model", model_dir, "--task", "ppl", "--data", text_file, "--seq-len", 16,
        "--out", tmp_path, "--batch-size", value,
    )
    assert "argument --batch-size: expected an int >= 1" in err
    assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize("value", ["0", "-64"])
def test_average_segment_size_is_named(capsys, model_dir, tmp_path, value):
    """0 was a ZeroDivisionError, -64 said 'chunk_size must be ...'."""
    err = _argparse_error(
        capsys, "eval", "--model", model_dir, "--task", "extrapolation", "--seq-len", 16, "--num-pairs", 2,
        "--num-examples", 2, "--out", tmp_path, "--average-segment-size", value,
    )
    assert "argument --average-segment-size: expected an int >= 1" in err


def test_factors_zero_is_named(capsys, model_dir, tmp_path):
    """It said 'num_pairs must be ...'."""
    err = _argparse_error(
        capsys, "eval", "--model", model_dir, "--task", "extrapolation", "--seq-len", 16, "--num-pairs", 2,
        "--out", tmp_path, "--factors", "1,0",
    )
    assert "argument --factors: expected an int >= 1, got '0'" in err


def test_library_calls_name_the_argument(model_dir):
    from mcrnn.eval.harness import eval_extrapolation, with_average_caching
    from mcrnn.train import evaluate_lm

    model = MCForCausalLM.from_pretrained(model_dir)
    with pytest.raises(ValueError, match="average segment_size must be an int >= 1, got -64"):
        with_average_caching(model, -64)
    with pytest.raises(ValueError, match="factors must be > 0"):
        eval_extrapolation(model, lambda n: None, 16, factors=(1, 0))
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got -3"):
        evaluate_lm(model, [], batch_size=-3)


def test_arguments_are_checked_before_the_model_loads(capsys, tmp_path):
    err = _error(*_run(capsys, "eval", "--model", tmp_path / "missing", "--task", "ppl"), "eval")
    assert "--task ppl needs --data" in err
    code, captured = _run(capsys, "eval", "--model", tmp_path, "--task", "ppl", "--data", tmp_path / "no")
    assert "--data file not found" in _error(code, captured, "eval")


# eval: damaged model folders ---------------------------------------------------------------------


def _damaged(model_dir, tmp_path, damage: str):
    import shutil

    path = tmp_path / "m"
    shutil.copytree(model_dir, path)
    weights, config = path / "model.safetensors", path / "config.json"
    if damage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "missing weights":
        weights.unlink()
    elif damage == "invalid config":
        config.write_text('{"hidden_size": 16,')
    elif damage == "sizes differ":
        config.write_text(json.dumps({**json.loads(config.read_text()), "hidden_size": 32}))
    return path


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        ("truncated weights", "corrupt model weights in {path}/model.safetensors"),
        ("missing weights", "model weights not found: {path}/model.safetensors"),
        ("invalid config", "invalid JSON in {path}/config.json"),
        ("sizes differ", "{path}/model.safetensors does not match {path}/config.json"),
    ],
)
def test_eval_on_a_damaged_model_folder(capsys, model_dir, tmp_path, damage, named):
    path = _damaged(model_dir, tmp_path, damage)
    code, captured = _run(
        capsys, "eval", "--model", path, "--task", "mqar", "--seq-len", 16, "--num-pairs", 2,
        "--num-examples", 2, "--out", tmp_path / "out",
    )
    assert named.format(path=path) in _error(code, captured, "eval")


def test_load_model_matches_from_pretrained(model_dir):
    from mcrnn.eval.harness import load_model

    ids = torch.randint(0, 257, (2, 12))
    with torch.no_grad():
        expected = MCForCausalLM.from_pretrained(model_dir).eval()(ids).logits
        torch.testing.assert_close(load_model(model_dir)(ids).logits, expected)


# eval: what it measures and records --------------------------------------------------------------


def test_eval_batch_size_is_used_by_every_task(capsys, model_dir, monkeypatch, tmp_path):
    from mcrnn.eval import harness

    sizes = []
    real = harness.evaluate_lm

    def spy(model, data, **kwargs):
        sizes.append(kwargs["batch_size"])
        return real(model, data, **kwargs)

    monkeypatch.setattr(harness, "evaluate_lm", spy)
    code, captured = _run(
        capsys, "eval", "--model", model_dir, "--task", "mqar", "niah", "--seq-len", 16, "--num-pairs", 2,
        "--num-examples", 3, "--niah-tasks", "niah_1", "--lengths", 240, "--batch-size", 3, "--out", tmp_path,
    )
    assert code == 0, captured.err
    assert sizes == [3, 3]


def test_ppl_records_what_it_measured(capsys, model_dir, text_file, tmp_path):
    code, captured = _run(
        capsys, "eval", "--model", model_dir, "--task", "ppl", "--data", text_file, "--seq-len", 32,
        "--batch-size", 4, "--out", tmp_path,
    )
    assert code == 0, captured.err
    ppl = json.loads((tmp_path / "results.json").read_text())["ppl"]
    assert ppl["data"] == [str(text_file)] and ppl["split"] == "val" and ppl["seq_len"] == 32
    assert ppl["windows"] >= 1 and ppl["perplexity"] > 1
    assert "ppl: perplexity on the last 10% (val split) of" in captured.out


def test_extrapolation_table_names_its_metric(capsys, model_dir, tmp_path):
    code, captured = _run(
        capsys, "eval", "--model", model_dir, "--task", "extrapolation", "--seq-len", 16, "--num-pairs", 2,
        "--num-examples", 2, "--factors", 1, 2, "--out", tmp_path,
    )
    assert code == 0, captured.err
    assert "extrapolation: accuracy per length (MQAR" in captured.out
    assert json.loads((tmp_path / "results.json").read_text())["extrapolation"]["metric"] == "accuracy"


def test_extrapolation_without_data_on_a_text_model_is_an_error(capsys, text_file, tmp_path):
    """It silently scored MQAR (all 0) on a model trained on text."""
    from mcrnn.data import TextDataset
    from mcrnn.train import TrainOptions, latest_checkpoint, train

    torch.manual_seed(0)
    options = TrainOptions(steps=1, batch_size=2, warmup_steps=0, progress=False, out_dir=str(tmp_path))
    train(MCForCausalLM(MCConfig(**TINY)), TextDataset([text_file], 16), options)
    checkpoint = latest_checkpoint(tmp_path)
    code, captured = _run(
        capsys, "eval", "--model", checkpoint, "--task", "extrapolation", "--seq-len", 16, "--num-pairs", 2,
        "--out", tmp_path / "out",
    )
    err = _error(code, captured, "eval")
    assert "trained on text data: --task extrapolation needs --data" in err


# bench -------------------------------------------------------------------------------------------


@pytest.fixture
def no_workers(monkeypatch):
    """Record (and never start) benchmark workers."""
    from mcrnn.bench import cli

    started = []
    monkeypatch.setattr(cli, "run_isolated", lambda case: started.append(case) or {"error": "x"})
    return started


def test_bench_cuda_without_cuda(capsys, monkeypatch, no_workers, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = _error(*_run(capsys, "bench", "--device", "cuda", "--seq-lens", 64, "--out", tmp_path), "bench")
    assert "--device cuda: CUDA is not available" in err and no_workers == []


def test_bench_unknown_device_starts_no_worker(capsys, no_workers, tmp_path):
    """`--device tpu` started 35 workers that each failed."""
    err = _argparse_error(capsys, "bench", "--device", "tpu", "--seq-lens", 64, "--out", tmp_path)
    assert "argument --device: expected cpu, cuda or cuda:N, got 'tpu'" in err and no_workers == []


def test_bench_on_cuda_defaults_to_the_gpu_lengths(capsys, monkeypatch, tmp_path):
    """`--seq-lens` defaulted to the CPU list, so `--device cuda` never measured 32K."""
    from mcrnn.bench import cli, gpu
    from mcrnn.bench.suites import GPU_SEQ_LENS

    class Measured(Exception):
        pass

    seen = []

    def fake_benchmark(seq_lens, **kwargs):
        seen.append(tuple(seq_lens))
        raise Measured

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(gpu, "gpu_benchmark", fake_benchmark)
    monkeypatch.setattr(cli, "machine_info", lambda: {})
    with pytest.raises(Measured):
        main(["--debug", "bench", "--device", "cuda", "--out", str(tmp_path)])
    assert seen == [GPU_SEQ_LENS] and 32768 in seen[0]


# errors, --debug, help, lists --------------------------------------------------------------------


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(capsys, monkeypatch, tmp_path):
    from mcrnn.eval import cli as eval_cli

    def boom(args):
        raise RuntimeError("deep failure\nwith a second line")

    monkeypatch.setattr(eval_cli, "run", boom)
    argv = ["eval", "--model", tmp_path, "--task", "mqar"]
    err = _error(*_run(capsys, *argv), "eval")
    assert err == "mcrnn eval: error: RuntimeError: deep failure (run with --debug for the traceback)"
    with pytest.raises(RuntimeError, match="deep failure"):
        main(["--debug", *map(str, argv)])
    with pytest.raises(RuntimeError, match="deep failure"):
        main([*map(str, argv), "--debug"])


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_has_a_description_defaults_and_an_example(capsys, command):
    from mcrnn.cli import build_parser

    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and f"\n  mcrnn {command}" in text
    parser = build_parser(command)._subparsers._group_actions[0].choices[command]
    assert parser.description and parser.description.strip()
    formatter = parser._get_formatter()
    for action in parser._actions:
        assert action.help, f"{command} {action.option_strings} has no help"
        if action.default not in (None, False, "==SUPPRESS=="):
            assert "default: " in formatter._expand_help(action), (command, action.dest)


@pytest.mark.parametrize(
    ("command", "option", "forms", "expected"),
    [
        ("eval", "lengths", (["512", "1024"], ["512,1024"], ["512", "--lengths", "1024"]), [512, 1024]),
        ("eval", "task", (["mqar", "niah"], ["mqar,niah"], ["mqar", "--task", "niah"]), ["mqar", "niah"]),
        ("eval", "factors", (["1", "2"], ["1,2"]), [1, 2]),
        ("bench", "seq_lens", (["1024", "2048"], ["1024,2048"]), [1024, 2048]),
        ("bench", "only", (["base", "grm"], ["base,grm"]), ["base", "grm"]),
        ("demo", "models", (["base", "grm"], ["base,grm"]), ["base", "grm"]),
    ],
)
def test_one_list_syntax_everywhere(command, option, forms, expected):
    from mcrnn.cli import build_parser

    parser = build_parser(command)
    required = {"eval": ["--model", "m"] + (["--task", "mqar"] if option != "task" else [])}.get(command, [])
    flag = "--" + option.replace("_", "-")
    for form in forms:
        args = parser.parse_args([command, *required, flag, *form])
        assert getattr(args, option) == expected, form
