import pytest
import torch

from mcrnn.data import IGNORE_INDEX, PasskeyConfig, PasskeyDataset, make_passkey


@pytest.mark.parametrize("random_key", [False, True])
def test_one_needle_asked_at_the_end(random_key):
    cfg = PasskeyConfig(vocab_size=16, seq_len=12, num_examples=300, seed=3, random_key=random_key)
    inputs, labels = make_passkey(cfg)
    assert inputs.shape == labels.shape == (300, 12)
    assert (labels[:, :-1] == IGNORE_INDEX).all()
    depths, filler = [], set()
    for row, label in zip(inputs, labels[:, -1], strict=True):
        key, value = int(row[-1]), int(label)
        assert 1 <= key < 8 and 8 <= value < 16
        (where,) = (row[:-1] == key).nonzero().flatten().tolist()  # the key once in the context...
        assert int(row[where + 1]) == value  # ...followed by its value, the only value token
        assert ((row >= 8).sum() == 1) and (row >= 1).all()
        depths.append(where)
        filler.update(row[:where].tolist() + row[where + 2 : -1].tolist())
    assert min(depths) == 0 and max(depths) == 12 - 3  # every depth the needle can have
    assert set(inputs[:, -1].tolist()) == (set(range(1, 8)) if random_key else {1})  # token 1: the marker
    assert filler == set(range(1 if random_key else 2, 8))  # a fixed marker is never filler


def test_seeded_and_dataset_items():
    cfg = PasskeyConfig(vocab_size=32, seq_len=20, num_examples=50, seed=1)
    a, b = make_passkey(cfg), make_passkey(cfg)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], make_passkey(PasskeyConfig(32, 20, 50, seed=2))[0])
    ds = PasskeyDataset(cfg)
    assert len(ds) == 50 and torch.equal(ds[4]["input_ids"], a[0][4])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"vocab_size": 5}, "vocab_size"), ({"seq_len": 2}, "seq_len"), ({"num_examples": 0}, "num_examples")],
)
def test_bad_config(kwargs, field):
    with pytest.raises(ValueError, match=field):
        PasskeyConfig(**kwargs)
