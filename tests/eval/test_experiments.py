"""``mcrnn experiment``: every experiment's --quick, resume, per-run failures, bad input, the results page."""

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from mcrnn.cli import main
from mcrnn.eval.experiments import EXPERIMENTS, experiment_module
from mcrnn.eval.experiments.page import write_page
from mcrnn.eval.experiments.runner import Run, count_params, matched_config, model_config, result_path
from mcrnn.eval.experiments.stats import mean_std
from mcrnn.eval.report import write_json

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 200


@pytest.fixture()
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    return str(path)


def _quick(name, out, *extra):
    return main(["experiment", name, "--quick", "--seeds", "0", "--out", str(out), *extra])


def test_every_experiment_quick_writes_its_results_and_the_page(tmp_path, text_file, capsys):
    out = tmp_path / "runs"
    started = time.perf_counter()
    statuses = {}
    for name in EXPERIMENTS:
        data = ["--data", text_file] if name in ("lm", "post-training") else []
        statuses[name] = _quick(name, out, *data)
    seconds = time.perf_counter() - started
    for name, status in statuses.items():
        module = experiment_module(name)
        if not hasattr(module, "plan"):
            continue
        settings = replace(module.QUICK, data=text_file) if name in ("lm", "post-training") else module.QUICK
        missing = [run for run in module.plan(settings, [0]) if not result_path(out, run).is_file()]
        # only DLA Log-Linear++ may fail: log segmentation of deep memories is not there yet
        assert all(run.model == "dla-log" for run in missing), missing
        assert status == (1 if missing else 0), name
    page = (out / "results.md").read_text(encoding="utf-8")
    for name in EXPERIMENTS:
        assert f"## {name}\n" in page
    assert "Not run yet." not in page
    for plot in ("recall", "niah", "lm", "post_training"):
        assert (out / "results" / f"{plot}.png").is_file()
    assert f"mcrnn experiment recall --quick --seeds 0 --device cpu --out {out}\n" in page
    assert seconds < 60, f"the quick experiments took {seconds:.0f}s"


def test_rerun_skips_finished_runs(tmp_path, monkeypatch, capsys):
    out = tmp_path / "runs"
    assert _quick("recall", out, "--models", "grm", "transformer") == 0
    first = {p.name: p.read_text() for p in (out / "recall").glob("*.json")}
    assert len(first) == 2

    def must_not_run(run, settings, device):
        raise AssertionError(f"{run.key} ran again")

    monkeypatch.setattr(experiment_module("recall"), "work", must_not_run)
    capsys.readouterr()
    assert _quick("recall", out, "--models", "grm", "transformer") == 0
    assert "0 done, 2 skipped, 0 failed" in capsys.readouterr().out
    assert {p.name: p.read_text() for p in (out / "recall").glob("*.json")} == first


def test_a_failed_run_is_recorded_and_the_others_go_on(tmp_path, monkeypatch, capsys):
    out = tmp_path / "runs"
    recall = experiment_module("recall")
    work = recall.work

    def ssc_fails(run, settings, device):
        if run.model == "ssc":
            raise RuntimeError("out of luck")
        return work(run, settings, device)

    monkeypatch.setattr(recall, "work", ssc_fails)
    assert _quick("recall", out, "--models", "ssc", "grm") == 1
    text = capsys.readouterr().out
    assert "FAILED: RuntimeError: out of luck" in text and "1 done, 0 skipped, 1 failed" in text
    failures = list((out / "recall" / "failed").glob("*.json"))
    assert [json.loads(f.read_text())["error"] for f in failures] == ["RuntimeError: out of luck"]
    assert "out of luck" in (out / "results.md").read_text(encoding="utf-8")
    monkeypatch.setattr(recall, "work", work)
    assert _quick("recall", out, "--models", "ssc", "grm") == 0  # the retry succeeds
    assert not list((out / "recall" / "failed").glob("*.json"))
    assert "1 done, 1 skipped, 0 failed" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["experiment", "nope"], "unknown experiment 'nope'"),
        (["experiment", "recall", "--lengths", "512"], "--lengths does not apply to experiment 'recall'"),
        (["experiment", "niah", "--widths", "8"], "--widths does not apply to experiment 'niah'"),
        (["experiment", "recall", "--models", "mamba"], "--models: unknown ['mamba']"),
        (["experiment", "report", "--steps", "5"], "--steps does not apply to 'report': it trains nothing"),
    ],
)
def test_bad_experiment_or_flag_is_one_line(tmp_path, capsys, argv, message):
    assert main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mcrnn experiment: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "recall").exists()


def test_bad_flag_value_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["experiment", "recall", "--seeds", "x"])
    assert exit_info.value.code == 2 and "--seeds" in capsys.readouterr().err


def _fake(out, experiment, model, seed, metrics, size="w16.00000000", settings=None):
    """A result file as the runner writes it: the experiment's default settings updated by ``settings``."""
    run = Run(experiment, model, size, seed)
    settings = {**asdict(experiment_module(experiment).Settings()), **(settings or {})}
    write_json(
        result_path(out, run),
        {
            "experiment": experiment,
            "model": model,
            "size": size,
            "seed": seed,
            "key": run.key,
            "metrics": metrics,
            "settings": settings,
            "wall_seconds": 60.0 + seed,
            "machine": {
                "platform": "Linux-test",
                "cpu": "Test CPU",
                "cpu_count": 2,
                "torch_threads": 1,
                "torch": "2.x",
                "gpu": None,
            },
            "command": f"mcrnn experiment {experiment} --seeds 0 1 2",
            "finished": f"2026-01-01 00:00:0{seed} UTC",
        },
    )


def test_report_from_fake_results(tmp_path, capsys):
    out, page = tmp_path / "runs", tmp_path / "docs" / "results.md"
    accuracies = {
        "base": (0.0, 0.0, 0.0),
        "grm": (0.5, 0.6, 0.7),
        "ssc": (0.4, 0.5, 0.6),
        "log": (0.1, 0.2, 0.3),
    }
    for model, values in accuracies.items():
        for seed, accuracy in enumerate(values):
            _fake(
                out,
                "recall",
                model,
                seed,
                {"width": 32, "accuracy": accuracy, "params": 1000},
                "w32.00000000",
            )
    for seed in range(3):
        common = {"params": 100, "param_ratio": 1.0, "param_target": 100, "train_tokens_per_second": 10.0}
        long_speed = {"base": 10.0, "grm": 5.0, "ssc": 8.0, "log": 9.0}
        for model, ppl in (("base", 4.0), ("grm", 3.0), ("ssc", 3.5), ("log", 3.8)):
            _fake(
                out,
                "lm",
                model,
                seed,
                {
                    **common,
                    "val_perplexity": ppl + seed / 10,
                    "long_forward_tokens_per_second": long_speed[model],
                },
                settings={"long_len": 2048},
            )
    # one run at other settings: its own table, and the claims use the settings with the most runs
    _fake(
        out, "recall", "grm", 0, {"width": 16, "accuracy": 0.0, "params": 1000}, "w16.11111111", {"steps": 2}
    )
    assert main(["experiment", "report", "--out", str(out), "--page", str(page)]) == 0
    text = page.read_text(encoding="utf-8")
    mean, std = mean_std([0.5, 0.6, 0.7])
    assert f"{mean:.3f} ± {std:.3f} (3)" == "0.600 ± 0.100 (3)" and "0.600 ± 0.100 (3)" in text
    assert "| linear + GRM " in text and "3.100 ± 0.100 (3)" in text  # lm perplexity of grm
    assert text.count("Not run yet.") == 3  # niah, post-training, retrofit
    assert (
        "### Current settings" in text and "### Older settings 1 of 1" in text and "0.000 ± 0.000 (1)" in text
    )
    assert (page.parent / "results" / "settings-2" / "recall.png").is_file()
    assert "Wall time: 12.2 min over 12 runs" in text and "Test CPU (2 cores, 1 torch threads)" in text
    assert "    mcrnn experiment recall --seeds 0 1 2" in text
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    # no gated DeltaNet or deep memory ran: their cells are listed as not run
    assert "| yes on what ran (4/9) |" in rows["MC > base RNN at equal state"]
    assert "dla-soup (w32) > dla-base: not run" in rows["MC > base RNN at equal state"]
    cheap = rows["SSC cheapest of the MC variants at long T"]  # 8 tok/s: above grm's 5, below log's 9
    assert (
        "| mixed (1 holds, 1 contradicted) |" in cheap
        and "ssc tok/s 8 ± 0 (3) > log tok/s 9 ± 0 (3)" in cheap
    )
    assert "| not run |" in rows["post-training caching helps extrapolation"]
    order = rows["GRM >= Soup >= SSC > Log-Linear++ > base on recall"]
    assert "grm (w32) 0.600 ± 0.100 (3) >= ssc 0.500 ± 0.100 (3): within noise" in order  # 0.1 < 0.1 + 0.1
    assert "ssc (w32) 0.500 ± 0.100 (3) > log 0.200 ± 0.100 (3): holds" in order  # 0.3 > 0.1 + 0.1
    assert "| mixed (2 holds, 1 within noise) on what ran (3/9) |" in order  # no gated DeltaNet or deep model
    assert "dla-ssc (w32) > dla-log: not run" in order
    assert (page.parent / "results" / "recall.png").is_file() and (
        page.parent / "results" / "lm.png"
    ).is_file()


def test_mean_std_is_the_sample_deviation():
    assert mean_std([2.0]) == (2.0, 0.0)
    mean, std = mean_std([1.0, 2.0, 3.0, 6.0])
    assert mean == 3.0 and abs(std - (14 / 3) ** 0.5) < 1e-12


@pytest.mark.parametrize("name", ["transformer", "dla-soup", "grm"])
def test_matched_config_is_within_half_a_swiglu_unit_of_the_target(name):
    sizes = {"vocab_size": 257, "width": 16, "layers": 2, "heads": 4, "segment": 8}
    target = count_params(model_config("base", **sizes))
    params = count_params(matched_config(name, target, **sizes))
    assert abs(params - target) <= 3 * 16 * 2 / 2, (params, target)


def test_ordering_reads_the_default_settings_even_when_an_older_group_has_more_runs(tmp_path):
    """Changed defaults leave the old runs on disk; the claims must come from the current settings."""
    from mcrnn.eval.experiments.ordering import main_settings

    out = tmp_path / "runs"
    for seed in range(3):
        for model in ("base", "grm"):
            _fake(
                out,
                "recall",
                model,
                seed,
                {"width": 16, "accuracy": 0.9, "params": 1},
                size="w16.11111111",
                settings={"steps": 7},
            )
    _fake(out, "recall", "base", 0, {"width": 16, "accuracy": 0.1, "params": 1})
    chosen = main_settings(out, "recall")
    assert [r["metrics"]["accuracy"] for r in chosen] == [0.1]


def test_a_comparison_outside_both_plans_is_not_listed():
    """Deep models run at one width only: a width where neither model ran is no missing comparison."""
    from mcrnn.eval.experiments.ordering import Claim

    claim = Claim()
    claim.compare(None, None, "dla-grm (w16)", "dla-base", ">")
    claim.compare((0.5, 0.1, 3), None, "grm (w64)", "base", ">")
    assert [outcome for _, outcome in claim.checks] == ["not run"]


@pytest.mark.parametrize("name", ["lm", "post-training"])
@pytest.mark.parametrize(
    ("data", "message"),
    [(None, "--data is required: the text file to train on"), ("missing.txt", "--data: no such file: ")],
)
def test_a_missing_data_file_fails_once_before_any_run(tmp_path, monkeypatch, capsys, name, data, message):
    """The default ``../shared/data/tinyshakespeare.txt`` existed only beside this checkout: elsewhere each
    of the runs failed on its own (exit 1, a failure file per run). Now one line, exit 2, nothing run."""
    monkeypatch.chdir(tmp_path)
    extra = ["--data", str(tmp_path / data)] if data else []
    assert main(["experiment", name, "--quick", "--seeds", "0", "1", "--out", "runs", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mcrnn experiment: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_report_without_page_writes_next_to_the_results(tmp_path, monkeypatch, capsys):
    """``mcrnn experiment report`` used to write ``docs/results.md`` under whatever folder it ran in."""
    monkeypatch.chdir(tmp_path)
    _fake(tmp_path / "runs", "recall", "base", 0, {"width": 16, "accuracy": 0.5, "params": 1})
    assert main(["experiment", "report", "--out", "runs"]) == 0
    assert (tmp_path / "runs" / "results.md").is_file() and not (tmp_path / "docs").exists()
    assert "wrote runs/results.md" in capsys.readouterr().out


def _failure(out, experiment, model, settings=None):
    """A failure file as the runner writes it, at the default settings updated by ``settings``."""
    run = Run(experiment, model, "w16.22222222", 0)
    write_json(
        out / experiment / "failed" / f"{run.key}.json",
        {
            **asdict(run),
            "key": run.key,
            "error": f"RuntimeError: {model} broke",
            "command": "mcrnn ...",
            "settings": {**asdict(experiment_module(experiment).Settings()), **(settings or {})},
            "traceback": "",
        },
    )


def test_only_failed_runs_of_the_current_settings_are_listed(tmp_path):
    """Failures of older settings stayed on the page for ever (as their own list, or under their group)."""
    out, page = tmp_path / "runs", tmp_path / "results.md"
    _fake(out, "recall", "base", 0, {"width": 16, "accuracy": 0.5, "params": 1})
    _fake(out, "recall", "grm", 0, {"width": 16, "accuracy": 0.5, "params": 1}, "w16.11111111", {"steps": 7})
    _failure(out, "recall", "ssc")
    _failure(out, "recall", "log", {"steps": 7})  # a group with a finished run
    _failure(out, "recall", "dla-grm", {"steps": 9})  # a group of failures only
    write_page(out, page)
    text = page.read_text(encoding="utf-8")
    assert "ssc broke" in text and "Failed runs (1;" in text
    assert "log broke" not in text and "dla-grm broke" not in text
    assert (
        text.index("### Current settings") < text.index("ssc broke") < text.index("### Older settings 1 of 1")
    )


def test_page_and_ordering_when_no_group_has_the_current_settings(tmp_path):
    """Only older settings ran: the page says so and the claims are not run (they used to be read from the
    group with the most runs, i.e. from settings the page calls old)."""
    from mcrnn.eval.experiments.ordering import claims

    out, page = tmp_path / "runs", tmp_path / "results.md"
    for seed in range(3):
        for model, accuracy in (("base", 0.1), ("grm", 0.9)):
            _fake(
                out,
                "recall",
                model,
                seed,
                {"width": 16, "accuracy": accuracy, "params": 1},
                size="w16.11111111",
                settings={"steps": 7},
            )
    write_page(out, page)
    text = page.read_text(encoding="utf-8")
    recall = text[text.index("## recall") : text.index("## niah")]
    assert "No run at the current settings yet" in recall and "### Older settings 1 of 1" in recall
    assert "0.900 ± 0.000 (3)" in recall  # the older group keeps its own table
    verdicts = {claim: result.verdict() for claim, _, result in claims(out)}
    assert set(verdicts.values()) == {"not run"}, verdicts
    rows = [line for line in text.splitlines() if line.startswith("| MC > base RNN")]
    assert len(rows) == 1 and "| not run | grm (w32) > base: not run<br>" in rows[0]


@pytest.mark.parametrize(
    ("left", "right", "sign", "outcome"),
    [
        ((0.0, 0.0, 3), (0.0, 0.0, 3), ">=", "within noise"),  # "0.000 >= 0.000" used to hold
        ((0.0, 0.0, 3), (0.0, 0.0, 3), ">", "within noise"),
        ((0.5004, 0.0, 3), (0.5, 0.0, 3), ">", "within noise"),  # below the printed digit: 0.500 > 0.500
        ((0.502, 0.0, 3), (0.5, 0.0, 3), ">", "holds"),
        ((0.6, 0.1, 3), (0.5, 0.1, 3), ">=", "within noise"),  # 0.1 is not above the margin 0.2
        ((0.8, 0.1, 3), (0.5, 0.1, 3), ">=", "holds"),
        ((0.2, 0.1, 3), (0.5, 0.1, 3), ">=", "contradicted"),
        ((3.0, 0.1, 3), (3.5, 0.1, 3), "<", "holds"),
    ],
)
def test_a_claim_holds_only_beyond_the_noise_margin(left, right, sign, outcome):
    from mcrnn.eval.experiments.ordering import Claim

    claim = Claim()
    claim.compare(left, right, "a", "b", sign)
    assert claim.checks[0][1] == outcome, claim.checks


def test_the_state_matched_base_width_holds_what_grm_reads():
    """grm at width w reads ceil(T / C) states of w^2 / heads floats at the end of a sequence; the base at
    the matched width holds that many in its one state (defaults: 4 x 4 x 8 x 8 = 4 x 16 x 16 = 1024)."""
    recall = experiment_module("recall")
    s = recall.Settings()
    matched = recall.state_matched_width(32, s)
    assert matched == 64 and matched**2 // s.heads == -(-s.seq_len // s.segment) * 32**2 // s.heads == 1024
    assert recall.family_widths("base", s) == (32, 64) and recall.family_widths("grm", s) == (32,)
    assert recall.family_widths("gdn-ssc", s) == (32,)
    assert recall.family_widths("transformer-conv", s) == (64,)
    assert recall.family_widths("transformer", s) == ()  # the plain Transformer++ only when asked for


def test_recall_trains_the_demos_models(monkeypatch):
    """The linear family at the recall defaults is the demo's model (same config, same lr, same data) at
    recall's segment, init, top-k and budget: the demo's settings before issue 24 changed them."""
    from mcrnn.eval.demo import DemoSettings
    from mcrnn.eval.demo import model_config as demo_config

    recall = experiment_module("recall")
    s = recall.Settings()
    demo = replace(DemoSettings(), segment_size=s.segment, ssc_top_k=2, steps=s.steps, init="independent")
    pairs = {"segment": "segment_size", "heads": "num_heads", "layers": "num_layers"}
    for name in (
        "vocab_size",
        "num_pairs",
        "seq_len",
        "steps",
        "batch_size",
        "segment",
        "heads",
        "layers",
        "lr",
        "transformer_lr",
        "eval_examples",
    ):
        assert getattr(s, name) == getattr(demo, pairs.get(name, name)), name
    captured = {}

    def fake_train(config, dataset, **kwargs):
        captured[config.mixer] = (config.to_dict(), dataset.config, kwargs)
        raise RuntimeError("stop")

    monkeypatch.setattr(recall, "train_model", fake_train)
    for model, demo_model in (
        ("base", "base"),
        ("grm", "grm"),
        ("ssc", "ssc"),
        ("transformer-conv", "transformer"),
    ):
        run = Run("recall", model, f"w{recall.family_widths(model, s)[0]}.x", 0)
        with pytest.raises(RuntimeError, match="stop"):
            recall.work(run, s, "cpu")
        config, data, kwargs = captured[demo_config(demo_model, demo).mixer]
        ignore = ("transformers_version", "architectures")
        want = {k: v for k, v in demo_config(demo_model, demo).to_dict().items() if k not in ignore}
        assert {k: v for k, v in config.items() if k not in ignore} == want, model
        assert data.seed == demo.seed and data.num_examples == demo.steps * demo.batch_size
        assert kwargs["lr"] == (demo.transformer_lr if demo_model == "transformer" else demo.lr)


def test_a_side_with_fewer_than_three_seeds_is_not_enough_runs():
    """One seed has no spread: with std 0 any difference beyond half a digit used to 'hold'."""
    from mcrnn.eval.experiments.ordering import Claim

    claim = Claim()
    claim.compare((0.9, 0.0, 1), (0.1, 0.0, 3), "grm", "base", ">")
    claim.compare((0.9, 0.05, 2), (0.1, 0.0, 3), "ssc", "base", ">")
    assert [o for _, o in claim.checks] == ["not enough runs"] * 2 and claim.verdict() == "not enough runs"
    claim.compare((0.9, 0.0, 3), (0.1, 0.0, 3), "log", "base", ">")
    assert claim.verdict() == "yes on what ran (1/3)"


def _recall_cells(out, accuracies, seeds=(0, 1, 2)):
    """Fake recall runs at the defaults: ``accuracies[model] = value`` (each seed's value +- 0.01)."""
    from mcrnn.eval.experiments.runner import size_tag

    recall = experiment_module("recall")
    for model, value in accuracies.items():
        for width in recall.family_widths(model, recall.Settings()):
            for seed in seeds:
                metrics = {"width": width, "accuracy": value + 0.01 * (seed - 1), "params": 1}
                _fake(out, "recall", model, seed, metrics, size_tag(f"w{width}", recall.Settings()))


def _niah_runs(out, accuracies):
    """Fake niah runs at the defaults: every task and length at ``accuracies[model]`` (+- 0.01 by seed)."""
    lengths = experiment_module("niah").Settings().lengths
    for model, value in accuracies.items():
        for seed in range(3):
            per = {str(n): value + 0.01 * (seed - 1) for n in lengths}
            _fake(
                out, "niah", model, seed, {"accuracy": {t: dict(per) for t in ("niah_1", "niah_2", "niah_3")}}
            )


def test_the_routing_statement_is_read_from_the_runs(tmp_path):
    """SSC ~ base on MQAR and SSC > base on S-NIAH: the page says the runs agree with both halves; with a
    cell missing it says not enough runs; SSC > base on MQAR makes the MQAR half disagree."""
    from mcrnn.eval.experiments.ordering import routing_lines

    out = tmp_path / "runs"
    _recall_cells(out, {"base": 0.30, "ssc": 0.31, "gdn-base": 0.5, "gdn-ssc": 0.5, "dla-base": 0.2})
    _niah_runs(out, {"base": 0.1, "ssc": 0.9})
    text = "\n".join(routing_lines(out))
    assert "MQAR (`recall`): no evidence yet: not enough runs (1 of 3 missing)" in text  # dla-ssc missing
    assert "dla-ssc (w32) > dla-base: not run" in text
    assert "These runs cannot judge the statement yet: not enough runs (1 of 3 missing)." in text
    _recall_cells(out, {"dla-ssc": 0.2})
    text = "\n".join(routing_lines(out))
    assert "MQAR (`recall`): routing does not help." in text and "routing helps." in text
    assert "ssc (w32) 0.310 ± 0.010 (3) > base 0.300 ± 0.010 (3): within noise" in text
    assert "These runs agree with both halves of the statement." in text
    _recall_cells(out, {"ssc": 0.9})  # overwrites the ssc runs
    text = "\n".join(routing_lines(out))
    assert "routing mixed (1 of 3 comparisons hold)" in text
    assert (
        "These runs agree that routing helps single-needle retrieval, but not that it does not help MQAR"
        in text
    )


def test_a_niah_cell_no_model_learned_is_no_evidence_about_routing(tmp_path):
    """Every model, the Transformer++ included, at 0.00 on S-NIAH (150 steps) read as "routing does not
    help single-needle retrieval" and "These runs disagree with both halves"; equal zeros say the budget
    taught nothing. A cell where any model scored is evidence again."""
    from mcrnn.eval.experiments.ordering import routing_lines

    out = tmp_path / "runs"
    recall = {"base": 0.30, "ssc": 0.31, "gdn-base": 0.5, "gdn-ssc": 0.5, "dla-base": 0.2, "dla-ssc": 0.2}
    _recall_cells(out, recall)
    _niah_runs(out, {"base": 0.0, "ssc": 0.0, "transformer": 0.0})  # seeds -0.01, 0, 0.01: means 0
    text = "\n".join(routing_lines(out))
    assert (
        "single-needle retrieval (`niah`): no evidence yet: no model learned the task at these settings "
        "(9 of 9 cells)" in text
    )
    assert "ssc (S-NIAH-1 @320) > base: every model scored 0, the Transformer++ too" in text
    assert "does not help single-needle" not in text and "disagree" not in text
    assert "These runs cannot judge the statement yet: no model learned the task" in text
    _niah_runs(out, {"transformer": 1.0})
    text = "\n".join(routing_lines(out))
    assert "ssc (S-NIAH-1 @320) 0.00 ± 0.01 (3) > base 0.00 ± 0.01 (3): within noise" in text
    assert "single-needle retrieval (`niah`): routing does not help." in text


def test_the_routing_statement_adds_the_frozen_host_evidence_of_retrofit(tmp_path):
    """The retrofit runs (routed ssc+query against the unrouted average and against no caching, at the
    longest length, passkey then MQAR) are a line of the statement; without them there is no line."""
    from mcrnn.eval.experiments.ordering import frozen_host_routing, routing_lines

    out = tmp_path / "runs"
    assert frozen_host_routing(out) is None
    reads = {
        "passkey": {"none": 0.6, "average": 0.9, "ssc+query": 0.98},
        "mqar": {"none": 0.3, "average": 0.3, "ssc+query": 0.31},
    }
    for task, accuracy in reads.items():
        for seed in range(3):
            per = {read: {"16": 1.0, "256": value + 0.01 * (seed - 1)} for read, value in accuracy.items()}
            _fake(out, "retrofit", task, seed, {"accuracy": per})
    line = frozen_host_routing(out)
    assert line.startswith("- routed reads added to a frozen host trained without caching (`retrofit`")
    assert "passkey: ssc+query @256 0.980 ± 0.010 (3) > average 0.900 ± 0.010 (3): holds" in line
    assert "ssc+query @256 0.980 ± 0.010 (3) > no caching 0.600 ± 0.010 (3): holds; MQAR:" in line
    assert "MQAR: ssc+query @256 0.310 ± 0.010 (3) > average 0.300 ± 0.010 (3): within noise" in line
    assert line in routing_lines(out)


def test_ordering_compares_mc_with_the_bigger_base_and_reads_a_reversal_as_contradicted(tmp_path):
    from mcrnn.eval.experiments.ordering import claims

    out = tmp_path / "runs"
    _recall_cells(out, {"base": 0.3, "grm": 0.9, "ssc": 0.2})
    result = {claim: c for claim, _, c in claims(out)}
    bigger = result["MC > a base RNN with a bigger state"]
    # base ran at both widths: 0.3 at 64 too
    assert bigger.checks == [
        ("grm (w32) 0.900 ± 0.010 (3) > base (w64) 0.300 ± 0.010 (3): holds", "holds"),
        ("ssc (w32) 0.200 ± 0.010 (3) > base (w64) 0.300 ± 0.010 (3): contradicted", "contradicted"),
    ]
    mc = result["MC > base RNN at equal state"]
    assert [o for _, o in mc.checks] == ["holds", "contradicted"] + ["not run"] * 5  # gated DeltaNet, DLA


def test_the_page_lists_missing_cells_with_their_estimated_time(tmp_path):
    out, page = tmp_path / "runs", tmp_path / "results.md"
    _recall_cells(out, {"base": 0.3, "grm": 0.9}, seeds=(0,))  # wall time 60 s (seed 0)
    _recall_cells(out, {"ssc": 0.5}, seeds=(0, 1, 2))
    write_page(out, page)
    text = page.read_text(encoding="utf-8")
    recall = text[text.index("## recall") : text.index("## niah")]
    missing = experiment_module("recall").plan(experiment_module("recall").Settings(), [0, 1, 2])
    n_missing = len(missing) - 2 * 1 - 3 - 1  # base at two widths and grm ran seed 0; ssc ran 3 seeds
    assert (
        f"Missing runs ({n_missing} in 13 cells; about 0.6 h on one process at the measured times" in recall
    )
    table = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in recall.splitlines()}
    assert [c.strip() for c in table[("base", "w64")].split("|")[3:5]] == ["1, 2", "1.0"]
    assert [c.strip() for c in table[("gdn-ssc", "w32")].split("|")[3:5]] == ["0, 1, 2", "~1.0"]
    assert "~: no run of the model yet, the mean of all 6 finished runs" in recall and "| ssc " not in recall
    assert "`mcrnn experiment recall --seeds 0 1 2` runs them" in recall
    assert "The linear base at width 64 (4 heads of 16: 1,024 state floats per layer)" in recall


def test_default_out_is_the_checkouts_results_folder_and_the_command_omits_it(tmp_path, monkeypatch):
    """Runs from a checkout land in docs/results/runs (committed) and the page in docs/results.md; --quick
    and an explicit --out do not; the recorded command names --out only when given."""
    import argparse

    from mcrnn.eval.experiments.cli import add_arguments, command_of, where
    from mcrnn.eval.experiments.runner import CHECKOUT_RUNS, checkout_root

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    root = checkout_root()
    assert root is not None and (root / "pyproject.toml").is_file()
    args = parser.parse_args(["recall", "--models", "base"])
    assert where(args) == (root / CHECKOUT_RUNS, root / "docs" / "results.md")
    assert command_of(args) == "mcrnn experiment recall --seeds 0 1 2 --device cpu --models base"
    monkeypatch.chdir(tmp_path)
    quick = parser.parse_args(["recall", "--quick"])
    assert where(quick) == (Path("runs/experiments"), Path("runs/experiments/results.md"))
    given = parser.parse_args(["recall", "--out", "elsewhere"])
    assert where(given) == (
        Path("elsewhere"),
        Path("elsewhere/results.md"),
    ) and "--out elsewhere" in command_of(given)


def test_each_run_records_the_commit_of_its_code(tmp_path):
    import re

    from mcrnn.eval.experiments.runner import checkout_root, source_commit

    assert _quick("recall", tmp_path / "runs", "--models", "grm") == 0
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "runs" / "recall").glob("*.json")]
    if not (checkout_root() / ".git").exists():
        pytest.skip("not a git checkout")
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", record["commit"]) and record["commit"] == source_commit()


def test_a_recall_run_scores_what_the_demo_scores_for_the_same_seed(tmp_path):
    """End to end at a tiny budget: recall's linear-family run of seed s is the demo's model of seed s
    (same held-out loss to the last bit), so the demo's seeds and the recall cells are one body of runs."""
    from mcrnn.eval.demo import DemoSettings, run_demo
    from mcrnn.eval.experiments.runner import size_tag

    recall = experiment_module("recall")
    s = recall.Settings(steps=3, batch_size=2, eval_examples=8)
    demo = run_demo(
        DemoSettings(
            steps=3, batch_size=2, eval_examples=8, seed=1, segment_size=s.segment, ssc_top_k=2,
            init="independent",
        ),
        tmp_path,
        models=("grm",),
        progress=False,
    )
    ours = recall.work(Run("recall", "grm", size_tag("w32", s), 1), s, "cpu")
    assert (ours["eval_loss"], ours["accuracy"]) == (demo["grm"]["eval_loss"], demo["grm"]["accuracy"])


def test_recorded_commit_is_dirty_only_when_the_code_changed(tmp_path, monkeypatch):
    """A rewritten results page (docs/) left the next runs marked ``+dirty`` though their code was the
    commit's; only a change under mcrnn/ or pyproject.toml counts."""
    import subprocess

    from mcrnn.eval.experiments import runner

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    (tmp_path / "mcrnn").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "mcrnn" / "code.py").write_text("x = 1\n")
    (tmp_path / "docs" / "results.md").write_text("page\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    monkeypatch.setattr(runner, "checkout_root", lambda: tmp_path)

    def commit() -> str:
        runner.source_commit.cache_clear()
        return runner.source_commit()

    (tmp_path / "docs" / "results.md").write_text("page rewritten by a run\n")
    assert not commit().endswith("+dirty")
    (tmp_path / "mcrnn" / "code.py").write_text("x = 2\n")
    assert commit().endswith("+dirty")
    runner.source_commit.cache_clear()
