"""Token-level passkey retrieval: one needle at a random depth of random filler, asked at the end.

A sequence of ``T`` input tokens holds the needle ``m v`` (the marker ``m = 1``, "the pass key is", and
the passkey ``v``, a value in ``[V/2, V)``) starting at a uniform random position in ``[0, T - 3]``;
every other position but the last is filler drawn uniformly from ``[2, V/2)`` (so the marker and the
value appear nowhere else); the last input token is the marker again and its label is ``v``, the only
position with a loss (``labels`` is ``-100`` elsewhere, the next-token convention of MQAR). The needle
lies on average ``T / 2`` tokens before the question, so a longer ``T`` asks the memory to hold it
through more filler: the passkey retrieval of Mohtashami & Jaggi (2023) and RULER's single needle,
without words. With ``random_key=True`` the marker is a key drawn per sequence from ``[1, V/2)`` and the
filler avoids it (a single associative recall: harder to learn, one supervised position a sequence).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from mcrnn.data.mqar import IGNORE_INDEX


@dataclass(frozen=True)
class PasskeyConfig:
    """One passkey split: vocabulary ``V`` (marker and filler ``[1, V/2)``, values ``[V/2, V)``), ``T`` input
    tokens, the number of sequences, the seed (every sequence is a pure function of the config) and
    whether the marker is a random key per sequence."""

    vocab_size: int = 64
    seq_len: int = 64
    num_examples: int = 1000
    seed: int = 0
    random_key: bool = False

    def __post_init__(self) -> None:
        for name in ("vocab_size", "seq_len", "num_examples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.vocab_size < 6:
            raise ValueError(f"vocab_size must be >= 6 (two keys and a value), got {self.vocab_size}")
        if self.seq_len < 3:
            raise ValueError(f"seq_len must be >= 3 (the needle and the question), got {self.seq_len}")


def make_passkey(config: PasskeyConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate ``(input_ids, labels)``, both LongTensor ``[num_examples, seq_len]``."""
    rng = np.random.default_rng(config.seed)
    n, t, half = config.num_examples, config.seq_len, config.vocab_size // 2
    keys = rng.integers(1, half, size=n) if config.random_key else np.ones(n, dtype=np.int64)
    values = rng.integers(half, config.vocab_size, size=n)
    filler = rng.integers(1, half - 1, size=(n, t))
    tokens = filler + (filler >= keys[:, None])  # uniform over [1, V/2) without the row's key
    rows = np.arange(n)
    depth = rng.integers(0, t - 2, size=n)
    tokens[rows, depth] = keys
    tokens[rows, depth + 1] = values
    tokens[:, -1] = keys
    labels = np.full((n, t), IGNORE_INDEX, dtype=np.int64)
    labels[:, -1] = values
    return torch.from_numpy(tokens.astype(np.int64)), torch.from_numpy(labels)


class PasskeyDataset(Dataset):
    """Map-style dataset of passkey sequences; item ``i`` is ``{"input_ids": [T], "labels": [T]}``."""

    def __init__(self, config: PasskeyConfig) -> None:
        self.config = config
        self.input_ids, self.labels = make_passkey(config)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[index], "labels": self.labels[index]}
