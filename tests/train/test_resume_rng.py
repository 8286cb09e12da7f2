"""Resuming reproduces a run whose model draws from the global CPU RNG (dropout on the embeddings)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mcrnn.data import MQARConfig, MQARDataset
from mcrnn.models import MCConfig, MCForCausalLM
from mcrnn.train import TrainOptions, train

MODEL = {"vocab_size": 32, "hidden_size": 32, "num_hidden_layers": 1, "num_heads": 2, "mixer": "attention"}
DATA = {"vocab_size": 32, "num_pairs": 4, "seq_len": 24, "num_examples": 64, "seed": 0}


def _run(out_dir, resume: bool = False) -> list[float]:  # noqa: ANN001
    torch.manual_seed(0)
    model = MCForCausalLM(MCConfig(**MODEL))
    model.model.embed_tokens.register_forward_hook(
        lambda module, _inputs, out: F.dropout(out, p=0.3, training=module.training)
    )
    options = TrainOptions(
        steps=6, batch_size=8, micro_batch_size=4, warmup_steps=2, log_every=1, progress=False,
        out_dir=str(out_dir), save_every=3,
    )
    return train(model, MQARDataset(MQARConfig(**DATA)), options, resume=resume).losses


def test_resume_restores_the_cpu_rng(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    full = _run(tmp_path / "full")
    _run(tmp_path / "part")
    # a run stopped after step 3: "latest" points back at the step-3 checkpoint
    (tmp_path / "part" / "checkpoints" / "latest").write_text("step_00000003\n")
    assert _run(tmp_path / "part", resume=True) == pytest.approx(full[3:], rel=1e-6, abs=1e-7)
    # the guard: without the RNG restored, the dropout masks (so the losses) differ
    (tmp_path / "part" / "checkpoints" / "latest").write_text("step_00000003\n")
    monkeypatch.setattr(torch, "set_rng_state", lambda state: None)
    assert _run(tmp_path / "part", resume=True) != pytest.approx(full[3:], rel=1e-6, abs=1e-7)
