"""``mcrnn experiment retrofit --quick``: every variant is scored at every length, the learned router
trains alone (the backbone is unchanged by it), and the page gets its section."""

import json

import torch

import mcrnn.eval.experiments.retrofit as experiment
from mcrnn.cli import main


def test_quick_run_scores_every_variant_and_writes_the_section(tmp_path, monkeypatch):
    trained = {}
    train_router = experiment._train_router

    def spy(model, mqar, s, seed, device):  # the backbone before and after the router's training
        before = {n: p.detach().clone() for n, p in model.named_parameters() if "mc_router" not in n}
        out = train_router(model, mqar, s, seed, device)
        after = dict(model.named_parameters())
        trained["backbone_unchanged"] = all(torch.equal(p, after[n]) for n, p in before.items())
        return out

    monkeypatch.setattr(experiment, "_train_router", spy)
    out = tmp_path / "runs"
    argv = ["experiment", "retrofit", "--quick", "--seeds", "0", "--out", str(out)]
    assert main([*argv, "--page", str(tmp_path / "results.md")]) == 0
    (result_file,) = (out / "retrofit").glob("*.json")
    metrics = json.loads(result_file.read_text())["metrics"]
    assert set(metrics["accuracy"]) == set(experiment.VARIANTS)
    assert all(set(per) == {"16", "32"} for per in metrics["accuracy"].values())
    assert metrics["router_params"] > 0 and len(metrics["router_gates"]) == 2 * 2  # 2 layers x 2 heads
    assert trained["backbone_unchanged"]
    page = (tmp_path / "results.md").read_text()
    assert "## retrofit" in page and "| grm+learned |" in page
