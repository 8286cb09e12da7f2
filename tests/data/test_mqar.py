import pytest
import torch

from mcrnn.data import IGNORE_INDEX, MQARConfig, MQARDataset, make_mqar


def test_layout_and_labels():
    cfg = MQARConfig(vocab_size=64, num_pairs=4, seq_len=32, num_examples=16, seed=3)
    inputs, labels = make_mqar(cfg)
    assert inputs.shape == labels.shape == (16, 32)
    half = cfg.vocab_size // 2
    for row_in, row_lab in zip(inputs, labels, strict=True):
        keys, values = row_in[0:8:2], row_in[1:8:2]
        assert ((keys >= 1) & (keys < half)).all() and len(set(keys.tolist())) == 4
        assert ((values >= half) & (values < cfg.vocab_size)).all()
        pairs = dict(zip(keys.tolist(), values.tolist(), strict=True))
        answered = (row_lab != IGNORE_INDEX).nonzero().flatten()
        assert len(answered) == 4 and (answered >= 8).all()
        for t in answered.tolist():  # label at a query key is the value of that key
            assert pairs[int(row_in[t])] == int(row_lab[t])
            if t + 1 < 32:
                assert int(row_in[t + 1]) == int(row_lab[t])


def test_seeded_and_power_law_prefers_early_queries():
    cfg = MQARConfig(vocab_size=256, num_pairs=4, seq_len=256, num_examples=200, seed=1)
    a, b = make_mqar(cfg), make_mqar(cfg)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], make_mqar(MQARConfig(**{**cfg.__dict__, "seed": 2}))[0])
    positions = (a[1] != IGNORE_INDEX).nonzero()[:, 1].float()
    assert positions.mean() < 8 + (256 - 8) / 2  # skewed toward the start of the query region


def test_dataset_items():
    ds = MQARDataset(MQARConfig(vocab_size=32, num_pairs=2, seq_len=16, num_examples=5))
    assert len(ds) == 5 and set(ds[0]) == {"input_ids", "labels"}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_pairs": 40, "vocab_size": 64}, "vocab_size"),
        ({"seq_len": 10}, "seq_len"),
        ({"alpha": 0}, "alpha"),
    ],
)
def test_bad_config(kwargs, field):
    with pytest.raises(ValueError, match=field):
        MQARConfig(**{"vocab_size": 64, "num_pairs": 4, **kwargs})
