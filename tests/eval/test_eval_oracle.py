"""Evaluation against stub models whose logits are known: exact accuracy, loss and sequence accuracy.

The datasets' labels are already shifted (``labels[t]`` is the token to predict after ``input_ids[:t+1]``),
so the scores must compare ``logits[t]`` with ``labels[t]``; an off-by-one changes every number here.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
from torch import nn

from mcrnn.data import MQARConfig
from mcrnn.eval.harness import eval_mqar
from mcrnn.train import evaluate_lm

VOCAB = 5
SCALE = 3.0


class StubLM(nn.Module):
    """``logits[b, t] = SCALE * onehot(predict(input_ids)[b, t])``: a model with known outputs."""

    def __init__(self, predict) -> None:  # noqa: ANN001
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # evaluate_lm reads the device from a parameter
        self.predict, self.vocab = predict, VOCAB

    def forward(self, input_ids: torch.Tensor, **_: object) -> SimpleNamespace:
        onehot = nn.functional.one_hot(self.predict(input_ids), self.vocab).double()
        return SimpleNamespace(logits=SCALE * onehot + 0 * self.anchor)


def successor(ids: torch.Tensor) -> torch.Tensor:
    return (ids + 1) % VOCAB


def test_accuracy_loss_and_sequence_accuracy_are_exact() -> None:
    """Three sequences of lengths 4, 3, 5 (batches of 2, so one is right-padded); the stub predicts
    ``id + 1``. Labelled positions: 9, of which 6 are right; one sequence is right everywhere."""
    ignore = -100
    data = [
        {"input_ids": torch.tensor([0, 1, 2, 3]), "labels": torch.tensor([1, 2, 0, ignore])},  # 2 of 3
        {"input_ids": torch.tensor([4, 0, 1]), "labels": torch.tensor([0, 1, 2])},  # 3 of 3
        {
            "input_ids": torch.tensor([2, 2, 2, 2, 2]),
            "labels": torch.tensor([ignore, 3, 4, 4, ignore]),
        },  # 1 of 3
    ]
    scores = evaluate_lm(StubLM(successor), data, batch_size=2)
    # cross-entropy of the predicted label (logit SCALE, VOCAB - 1 zeros) and of another one (logit 0)
    right, wrong = math.log(1 + (VOCAB - 1) * math.exp(-SCALE)), math.log(math.exp(SCALE) + VOCAB - 1)
    assert scores["tokens"] == 9
    assert scores["accuracy"] == 6 / 9
    assert math.isclose(scores["loss"], (6 * right + 3 * wrong) / 9, rel_tol=1e-6)  # scored in float32
    assert scores["sequence_accuracy"] == 1 / 3
    assert math.isclose(scores["perplexity"], math.exp(scores["loss"]), rel_tol=1e-12)


def recall_oracle(num_pairs: int):  # noqa: ANN201
    """Perfect MQAR recall: after a key seen in the context (positions 0, 2, .., 2P-2), its value."""

    def predict(ids: torch.Tensor) -> torch.Tensor:
        keys, values = ids[:, 0 : 2 * num_pairs : 2], ids[:, 1 : 2 * num_pairs : 2]  # [B, P]
        match = ids[:, :, None] == keys[:, None, :]  # [B, T, P]
        found = (match.long() * values[:, None, :]).sum(-1)
        return torch.where(match.any(-1), found, torch.zeros_like(ids))

    return predict


def test_mqar_recall_oracle_scores_one() -> None:
    config = MQARConfig(vocab_size=32, num_pairs=4, seq_len=32, num_examples=12)
    model = StubLM(recall_oracle(4))
    model.vocab = 32
    scores = eval_mqar(model, config, batch_size=5)
    assert scores["accuracy"] == 1.0 and scores["sequence_accuracy"] == 1.0 and scores["tokens"] == 48
    assert math.isclose(scores["loss"], math.log(1 + 31 * math.exp(-SCALE)), rel_tol=1e-6)


def test_rows_without_a_labelled_position_are_not_sequences() -> None:
    """A row whose labels are all ignored is neither right nor counted (``(hit | ~mask).all()`` alone is
    True for it: it would count as a right sequence); with no labelled row the scores are 0, not NaN."""
    ignore = -100
    unlabelled = {"input_ids": torch.tensor([1, 2, 3]), "labels": torch.tensor([ignore] * 3)}
    right = {"input_ids": torch.tensor([0, 1, 2]), "labels": torch.tensor([1, 2, 3])}
    wrong = {"input_ids": torch.tensor([0, 1, 2]), "labels": torch.tensor([1, 2, 0])}
    for batch_size in (1, 3):  # the unlabelled row alone in its batch, and beside the others
        scores = evaluate_lm(StubLM(successor), [unlabelled, right, wrong], batch_size=batch_size)
        assert scores["sequence_accuracy"] == 1 / 2 and scores["tokens"] == 6 and scores["accuracy"] == 5 / 6
    empty = evaluate_lm(StubLM(successor), [unlabelled, unlabelled], batch_size=2)
    assert empty["sequence_accuracy"] == 0.0 and empty["accuracy"] == 0.0 and empty["tokens"] == 0
