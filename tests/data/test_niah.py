import pytest
import torch

from mcrnn.data import IGNORE_INDEX, NIAH_TASKS, ByteTokenizer, NIAHConfig, NIAHDataset


@pytest.mark.parametrize("task", NIAH_TASKS)
@pytest.mark.parametrize("length", [256, 700])
def test_length_needle_answer(task, length):
    ds = NIAHDataset(NIAHConfig(task=task, context_length=length, num_examples=3, seed=5))
    tok = ByteTokenizer()
    for item, answer in zip(ds.items, ds.answers, strict=True):
        ids, labels = item["input_ids"], item["labels"]
        n_answer = len(tok.encode(" " + answer))
        assert ids.shape == labels.shape == (length + n_answer - 1,)
        text = tok.decode(ids[:length].tolist())
        assert f"is: {answer}." in text  # the needle
        assert text.endswith("mentioned in the provided text is:")
        target = labels[labels != IGNORE_INDEX]
        assert tok.decode(target.tolist()) == " " + answer
    if task == "niah_3":
        assert all(len(a) == 36 and a.count("-") == 4 for a in ds.answers)
    else:
        assert all(a.isdigit() and len(a) == 7 for a in ds.answers)


def test_seeded_reproducible_and_distinct():
    cfg = NIAHConfig(task="niah_2", context_length=300, num_examples=4, seed=1)
    a, b = NIAHDataset(cfg), NIAHDataset(cfg)
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a.items, b.items, strict=True))
    assert (
        NIAHDataset(NIAHConfig(task="niah_2", context_length=300, num_examples=4, seed=2)).answers
        != a.answers
    )


def test_bad_config():
    with pytest.raises(ValueError, match="task"):
        NIAHConfig(task="niah_9")
    with pytest.raises(ValueError, match="context_length"):
        NIAHDataset(NIAHConfig(context_length=20, num_examples=1))
