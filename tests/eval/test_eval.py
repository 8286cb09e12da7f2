import json
from argparse import Namespace
from dataclasses import asdict, replace

import pytest
import torch

from mcrnn.data import MQARConfig, MQARDataset
from mcrnn.eval.demo import (
    DEMO_MODELS,
    DemoSettings,
    model_config,
    run_demo,
    run_seeds,
    state_floats,
    summarize_seeds,
)
from mcrnn.eval.harness import eval_extrapolation, eval_mqar, eval_niah, with_average_caching
from mcrnn.eval.report import format_table, write_json
from mcrnn.models import MCConfig, MCForCausalLM

TINY = {"vocab_size": 257, "hidden_size": 32, "num_hidden_layers": 1, "num_heads": 2, "chunk_size": 8}


def _model(**kw):
    torch.manual_seed(0)
    return MCForCausalLM(MCConfig(**{**TINY, **kw})).eval()


def test_mqar_and_niah_scores_are_fractions():
    model = _model(mixer="attention")
    scores = eval_mqar(model, MQARConfig(vocab_size=257, num_pairs=4, seq_len=32, num_examples=8))
    assert 0.0 <= scores["accuracy"] <= 1.0 and scores["tokens"] == 32
    niah = eval_niah(model, ["niah_1", "niah_3"], [300, 360], num_examples=2)
    assert set(niah) == {"niah_1", "niah_3"} and set(niah["niah_1"]) == {300, 360}


def test_average_caching_keeps_weights_and_one_segment_is_the_base():
    base = _model(segment_size=None)
    ids = torch.randint(0, 257, (2, 32))
    whole = with_average_caching(base, 32)  # one segment: average over {online} = the base memory
    split = with_average_caching(base, 8)
    assert whole.config.aggregation == "average" and whole.config.segment_size == 32
    with torch.no_grad():
        torch.testing.assert_close(whole(ids).logits, base(ids).logits, atol=1e-5, rtol=1e-4)
        assert not torch.allclose(split(ids).logits, base(ids).logits)
    reference = base.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in split.state_dict().items())


def test_extrapolation_lengths():
    model = _model(segment_size=None)

    def make(length):
        return MQARDataset(MQARConfig(vocab_size=257, num_pairs=length // 8, seq_len=length, num_examples=4))

    out = eval_extrapolation(model, make, 16, factors=(1, 2), average_segment_size=8)
    assert set(out) == {"model", "average"} and set(out["model"]) == {16, 32}


def test_table_and_json(tmp_path):
    table = format_table([{"model": "a", "acc": 0.5, "params": 1234}], ["model", "acc", "params"])
    assert "| a " in table and "1,234" in table and "0.5" in table
    write_json(tmp_path / "r.json", {"x": 1})
    assert json.loads((tmp_path / "r.json").read_text()) == {"x": 1}


def test_eval_cli_on_a_saved_model(tmp_path):
    from mcrnn.eval import cli

    _model(segment_size=None).save_pretrained(tmp_path / "m")
    args = Namespace(
        model=str(tmp_path / "m"), task=["mqar", "extrapolation"], out=str(tmp_path / "out"), seq_len=16,
        num_pairs=2, num_examples=4, niah_tasks=["niah_1"], lengths=[200], split="val", data=None,
        tokenizer=None, factors=[1, 2], average_segment_size=8, batch_size=4, seed=0,
    )
    assert cli.run(args) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {"mqar", "extrapolation"} <= set(results) and (tmp_path / "out" / "extrapolation.png").is_file()
    with pytest.raises(FileNotFoundError, match="no model"):
        cli.run(Namespace(**{**vars(args), "model": str(tmp_path / "missing")}))


def test_demo_writes_results_for_every_model(tmp_path):
    settings = DemoSettings(
        vocab_size=32, num_pairs=4, seq_len=32, hidden_size=16, num_heads=2, num_layers=1, segment_size=8,
        steps=2, batch_size=4, eval_examples=8,
    )
    run_demo(settings, tmp_path, progress=False)
    results = json.loads((tmp_path / "results.json").read_text())
    for name in DEMO_MODELS:
        assert {"accuracy", "params", "train_seconds", "train_tokens_per_second"} <= set(results[name])
    assert (tmp_path / "demo.png").is_file()


def test_demo_transformer_has_its_own_width_and_conv_the_mc_models_share_the_base_state():
    settings = DemoSettings()
    transformer = model_config("transformer", settings)
    assert transformer.mixer == "attention" and transformer.hidden_size == settings.transformer_hidden_size
    assert transformer.attention_conv_size == settings.transformer_conv_size > 0
    base, grm, ssc = (model_config(name, settings) for name in ("base", "grm", "ssc"))
    assert base.hidden_size == grm.hidden_size == ssc.hidden_size == settings.hidden_size
    assert base.segment_size is None and grm.segment_size == ssc.segment_size == settings.segment_size
    assert state_floats("transformer", settings) == 2 * settings.seq_len * settings.transformer_hidden_size


def test_summarize_seeds_reports_every_seed_and_the_spread():
    records = {
        seed: {"base": {"accuracy": a, "train_seconds": 1.0}} for seed, a in ((2, 0.2), (0, 0.5), (1, 0.8))
    }
    summary = summarize_seeds(records)
    assert summary["base"]["accuracy_by_seed"] == {0: 0.5, 1: 0.8, 2: 0.2}
    assert summary["base"]["mean"] == pytest.approx(0.5) and summary["base"]["std"] == pytest.approx(0.3)
    assert (summary["base"]["min"], summary["base"]["max"]) == (0.2, 0.8)
    assert summarize_seeds({0: {"base": {"accuracy": 0.5, "train_seconds": 1.0}}})["base"]["std"] == 0.0


def test_demo_seeds_runs_each_seed_into_its_own_folder(tmp_path):
    settings = DemoSettings(
        vocab_size=32, num_pairs=4, seq_len=32, hidden_size=16, num_heads=2, num_layers=1, segment_size=8,
        steps=2, batch_size=4, eval_examples=8,
    )
    summary = run_seeds(settings, [3, 5, 3], tmp_path, models=["base"], progress=False)
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["seeds"] == [3, 5] and set(written["models"]) == {"base"}
    for seed in (3, 5):
        record = json.loads((tmp_path / f"seed{seed}" / "results.json").read_text())
        assert record["settings"]["seed"] == seed
        assert summary["base"]["accuracy_by_seed"][seed] == record["base"]["accuracy"]


def test_demo_seeds_resume_reads_finished_seeds_and_retrains_changed_ones(tmp_path, monkeypatch):
    """A sweep split across processes (or interrupted) is gathered by a last call with every seed; a seed
    of other settings, threads or models is trained again, never mixed in."""
    from mcrnn.eval import demo

    settings = DemoSettings(
        vocab_size=32, num_pairs=4, seq_len=32, hidden_size=16, num_heads=2, num_layers=1, segment_size=8,
        steps=2, batch_size=4, eval_examples=8,
    )
    first = run_seeds(settings, [3], tmp_path, models=["base"], progress=False)
    trained = []

    def fake_run_demo(s, out, models, progress):
        trained.append((s.seed, s.steps, tuple(models)))
        return {**{m: {"accuracy": 0.5, "train_seconds": 1.0} for m in models}, "settings": asdict(s),
                "machine": {"torch_threads": torch.get_num_threads()}}

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    again = run_seeds(settings, [3], tmp_path, models=["base"], progress=False)
    assert trained == [] and again == first
    run_seeds(replace(settings, steps=3), [3], tmp_path, models=["base"], progress=False)
    run_seeds(settings, [3], tmp_path, models=["base", "grm"], progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        run_seeds(settings, [3], tmp_path, models=["base"], progress=False)
    finally:
        torch.set_num_threads(threads)
    assert trained == [(3, 3, ("base",)), (3, 2, ("base", "grm")), (3, 2, ("base",))]


def test_demo_cli_runs_on_one_thread_unless_told(tmp_path):
    """The default demo sets one torch thread (its sweeps ran at one and two); ``--threads`` changes it."""
    from mcrnn.cli import main

    threads = torch.get_num_threads()
    try:
        for argv, expected in (([], 1), (["--threads", "2"], 2)):
            out = tmp_path / str(expected)
            argv = ["demo", "--steps", "1", "--models", "base", "--out", str(out), "--no-progress", *argv]
            assert main(argv) == 0
            assert json.loads((out / "results.json").read_text())["machine"]["torch_threads"] == expected
    finally:
        torch.set_num_threads(threads)
