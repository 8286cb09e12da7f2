"""``mcrnn experiment retrofit --quick``: both tasks, every variant scored at every length, the learned
router trains alone (the backbone is unchanged by it), and the page gets its section with the verdicts."""

import json

import torch

import mcrnn.eval.experiments.retrofit as experiment
from mcrnn.cli import main


def test_quick_run_scores_every_variant_and_writes_the_section(tmp_path, monkeypatch):
    trained = {}
    train_router = experiment._train_router

    def spy(model, task, s, seed, device):  # the backbone before and after the router's training
        before = {n: p.detach().clone() for n, p in model.named_parameters() if "mc_router" not in n}
        out = train_router(model, task, s, seed, device)
        after = dict(model.named_parameters())
        trained[task] = all(torch.equal(p, after[n]) for n, p in before.items())
        return out

    monkeypatch.setattr(experiment, "_train_router", spy)
    out = tmp_path / "runs"
    argv = ["experiment", "retrofit", "--quick", "--seeds", "0", "--out", str(out)]
    assert main([*argv, "--page", str(tmp_path / "results.md")]) == 0
    files = sorted((out / "retrofit").glob("*.json"))
    assert [f.name.split("__")[0] for f in files] == ["mqar", "passkey"]
    for result_file in files:
        metrics = json.loads(result_file.read_text())["metrics"]
        assert set(metrics["accuracy"]) == set(experiment.VARIANTS)
        assert all(set(per) == {"16", "32"} for per in metrics["accuracy"].values())
        assert metrics["router_params"] > 0 and len(metrics["router_gates"]) == 2 * 2  # 2 layers x 2 heads
    assert trained == {"passkey": True, "mqar": True}
    page = (tmp_path / "results.md").read_text()
    assert "## retrofit" in page and "### passkey" in page and "### mqar" in page
    assert page.count("| grm+learned |") == 4  # accuracy and change tables of each task
    assert (tmp_path / "results" / "retrofit-passkey.png").is_file()


def test_verdict_is_the_margin_rule():
    assert experiment.verdict((0.9, 0.05, 3), (0.5, 0.1, 3)) == "+0.400 helps"
    assert experiment.verdict((0.3, 0.05, 3), (0.5, 0.1, 3)) == "-0.200 hurts"
    assert experiment.verdict((0.6, 0.05, 3), (0.5, 0.1, 3)) == "+0.100 within noise"  # 0.1 <= 0.15


def test_summary_names_where_each_read_helps_or_hurts():
    base = {16: (0.9, 0.0, 3), 128: (0.5, 0.1, 3)}
    moved = {16: (0.7, 0.05, 3), 128: (0.9, 0.05, 3)}
    stats = {"none": base, **{v: moved for v in experiment.VARIANTS if v != "none"}}
    stats["average"] = base
    text = experiment.summary(stats, [16, 128])
    assert "`average` within noise at every length." in text
    assert "`grm+query` helps at T=128; hurts at T=16." in text
