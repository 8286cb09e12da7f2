"""Deterministic global batch order, so that a run can stop and resume at any step.

Sample ``p`` of the infinite stream (``p = step * batch_size + j``) is example
``perm_e[p mod N]`` of epoch ``e = p // N``, where ``perm_e`` is ``randperm(N)`` seeded with
``seed + e``. Process ``r`` of ``W`` takes slots ``j in [r*B/W, (r+1)*B/W)`` of every global batch,
so one process with batch ``B`` sees exactly the union of what ``W`` processes see.
"""

from __future__ import annotations

import functools

import torch
from torch.utils.data import Dataset

from mcrnn.data import IGNORE_INDEX


@functools.lru_cache(maxsize=2)
def epoch_permutation(num_examples: int, seed: int, epoch: int) -> torch.Tensor:
    """``perm_e``: ``randperm(num_examples)`` seeded with ``seed + epoch``, drawn once per epoch and process
    (a global batch may straddle two epochs; at millions of windows a draw costs seconds)."""
    return torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed + epoch))


def global_batch_indices(step: int, batch_size: int, num_examples: int, seed: int) -> list[int]:
    """Dataset indices of the global batch consumed at optimizer step ``step`` (0-based)."""
    out: list[int] = []
    position, end = step * batch_size, (step + 1) * batch_size
    while position < end:
        epoch, offset = divmod(position, num_examples)
        take = min(end - position, num_examples - offset)
        out.extend(epoch_permutation(num_examples, seed, epoch)[offset : offset + take].tolist())
        position += take
    return out


def collate(dataset: Dataset, indices: list[int]) -> dict[str, torch.Tensor]:
    """Stack ``input_ids`` and ``labels`` (and ``doc_start``, when items carry it) into [b, T] tensors.

    Shorter examples are padded on the right (ids with 0, labels with -100): a causal model's outputs at
    the real positions never see the padding, and no loss is taken on it.
    """
    items = [dataset[i] for i in indices]
    length = max(len(item["input_ids"]) for item in items)
    ids = torch.zeros(len(items), length, dtype=torch.long)
    labels = torch.full((len(items), length), IGNORE_INDEX, dtype=torch.long)
    for row, item in enumerate(items):
        ids[row, : len(item["input_ids"])] = item["input_ids"]
        labels[row, : len(item["labels"])] = item["labels"]
    batch = {"input_ids": ids, "labels": labels}
    if "doc_start" in items[0]:  # packed documents (TextDataset(separate_documents=True))
        batch["doc_start"] = torch.zeros(len(items), length, dtype=torch.bool)
        for row, item in enumerate(items):
            batch["doc_start"][row, : len(item["doc_start"])] = item["doc_start"]
    return batch


def rank_micro_batches(
    dataset: Dataset, step: int, batch_size: int, micro_batch_size: int, rank: int, world: int, seed: int
) -> list[dict[str, torch.Tensor]]:
    """The micro-batches process ``rank`` runs at ``step``: its ``batch_size / world`` slots, in order."""
    indices = global_batch_indices(step, batch_size, len(dataset), seed)
    per_rank = batch_size // world
    mine = indices[rank * per_rank : (rank + 1) * per_rank]
    return [collate(dataset, mine[i : i + micro_batch_size]) for i in range(0, per_rank, micro_batch_size)]
