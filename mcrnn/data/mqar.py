"""Multi-query associative recall (MQAR), as in Zoology (Arora et al., 2023).

A sequence of ``T`` tokens starts with ``P`` key-value pairs ``k_1 v_1 ... k_P v_P`` and is followed by a
query region in which every key appears once more, at positions drawn from a power law; the model must
emit the matching value right after each repeated key. Keys come from ``[1, V/2)``, values from
``[V/2, V)``; token 0 is never a key or value. Positions in the query region that hold no query are
filled with random tokens (``random_non_queries=True``, as in Zoology) or 0.

Power law: the query region has ``G = (T + 1 - 2P) // 2`` two-token slots; slot ``j`` (0-based) is chosen
with probability ``p(j) ∝ alpha * (j + 1) ** (alpha - 1)``, without replacement, so small ``alpha``
pushes queries toward the start of the region (short gaps) and ``alpha = 1`` is uniform.

Labels follow the next-token convention: ``labels[t]`` is the token the model should predict after
reading ``input_ids[:t + 1]``: the value at every query-key position, ``-100`` everywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

IGNORE_INDEX = -100


@dataclass(frozen=True)
class MQARConfig:
    """Parameters of one MQAR split.

    Attributes:
        vocab_size: ``V``; keys in ``[1, V/2)``, values in ``[V/2, V)``.
        num_pairs: ``P`` key-value pairs per sequence (distinct keys).
        seq_len: ``T``, the model's input length (needs ``T >= 4P - 1``).
        num_examples: number of sequences.
        alpha: power-law exponent of the query placement (Zoology's default 0.01).
        random_non_queries: fill unused query-region positions with random tokens instead of 0.
        seed: everything is a pure function of the config, this seed included.
    """

    vocab_size: int = 8192
    num_pairs: int = 8
    seq_len: int = 64
    num_examples: int = 1000
    alpha: float = 0.01
    random_non_queries: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "num_pairs", "seq_len", "num_examples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.num_pairs > self.vocab_size // 2 - 1:
            raise ValueError(
                f"num_pairs={self.num_pairs} needs vocab_size >= {2 * self.num_pairs + 2} (distinct keys in "
                f"[1, vocab_size/2)), got vocab_size={self.vocab_size}"
            )
        if self.seq_len + 1 < 4 * self.num_pairs:
            raise ValueError(
                f"seq_len must be >= 4*num_pairs - 1 = {4 * self.num_pairs - 1} to fit the pairs and their "
                f"queries, got {self.seq_len}"
            )
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")


def make_mqar(config: MQARConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate ``(input_ids, labels)``, both LongTensor ``[num_examples, seq_len]``."""
    rng = np.random.default_rng(config.seed)
    n, pairs, half = config.num_examples, config.num_pairs, config.vocab_size // 2
    full_len = config.seq_len + 1
    context = 2 * pairs
    keys = np.stack([rng.choice(np.arange(1, half), size=pairs, replace=False) for _ in range(n)])
    values = rng.integers(half, config.vocab_size, size=(n, pairs))
    slots = (full_len - context) // 2
    weights = config.alpha * np.arange(1, slots + 1, dtype=np.float64) ** (config.alpha - 1)
    weights /= weights.sum()
    if config.random_non_queries:
        tokens = rng.integers(1, config.vocab_size, size=(n, full_len))
    else:
        tokens = np.zeros((n, full_len), dtype=np.int64)
    targets = np.full((n, full_len), IGNORE_INDEX, dtype=np.int64)
    rows = np.arange(n)[:, None]
    tokens[:, 0:context:2] = keys
    tokens[:, 1:context:2] = values
    gaps = np.stack([rng.choice(slots, size=pairs, replace=False, p=weights) for _ in range(n)])
    query_pos = context + 2 * gaps
    order = np.stack([rng.permutation(pairs) for _ in range(n)])
    tokens[rows, query_pos] = keys[rows, order]
    tokens[rows, query_pos + 1] = values[rows, order]
    targets[rows, query_pos + 1] = values[rows, order]
    inputs = torch.from_numpy(tokens[:, :-1].astype(np.int64))
    labels = torch.from_numpy(targets[:, 1:].astype(np.int64))
    return inputs, labels


class MQARDataset(Dataset):
    """Map-style dataset of MQAR sequences; item ``i`` is ``{"input_ids": [T], "labels": [T]}``."""

    def __init__(self, config: MQARConfig) -> None:
        self.config = config
        self.input_ids, self.labels = make_mqar(config)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[index], "labels": self.labels[index]}
