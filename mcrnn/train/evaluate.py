"""Teacher-forced evaluation of a causal LM on a labelled dataset.

For labelled positions ``P = {(b, t): labels[b, t] != -100}``:
``loss = mean_P CE(logits[b, t], labels[b, t])``, ``accuracy = mean_P [argmax logits[b, t] = labels[b, t]]``
and ``sequence_accuracy`` = the fraction of sequences whose labelled positions are all right (for S-NIAH
this equals exact-match greedy decoding of the answer). A row with no labelled position has nothing to
get right: it counts neither as right nor in the total (so never NaN), and with no labelled row at all
loss, accuracies and tokens are 0 (perplexity 1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from mcrnn.data import IGNORE_INDEX
from mcrnn.train.sampler import collate


@torch.no_grad()
def evaluate_lm(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 32,
    max_batches: int | None = None,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """``{"loss", "perplexity", "accuracy", "sequence_accuracy", "tokens"}`` over the dataset, in order."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if max_batches is not None and (not isinstance(max_batches, int) or max_batches < 1):
        raise ValueError(f"max_batches must be an int >= 1 or None, got {max_batches!r}")
    was_training = model.training
    model.eval()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    total_loss, correct, tokens, seq_right, seqs = 0.0, 0, 0, 0, 0
    n_batches = math.ceil(len(dataset) / batch_size)
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)
    for b in range(n_batches):
        batch = collate(dataset, list(range(b * batch_size, min((b + 1) * batch_size, len(dataset)))))
        ids, labels = batch["input_ids"].to(device), batch["labels"].to(device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = lm_logits(model, ids, batch.get("doc_start"))
        logits = logits.float()
        mask = labels != IGNORE_INDEX
        total_loss += F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum").item()
        hit = (logits.argmax(-1) == labels) & mask
        correct += int(hit.sum())
        tokens += int(mask.sum())
        seq_right += int(((hit | ~mask).all(dim=1) & mask.any(dim=1)).sum())
        seqs += int(mask.any(dim=1).sum())
    model.train(was_training)
    loss = total_loss / max(tokens, 1)
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "accuracy": correct / max(tokens, 1),
        "sequence_accuracy": seq_right / max(seqs, 1),
        "tokens": tokens,
    }


def lm_logits(model: nn.Module, ids: torch.Tensor, doc_start: torch.Tensor | None) -> torch.Tensor:
    """Logits [B, T, V]; with ``doc_start`` [B, T] (packed documents) the batch runs as one packed row
    whose ``cu_seqlens`` cut at every window and document start, so no state crosses either."""
    if doc_start is None:
        return model(input_ids=ids, use_cache=False).logits
    batch, seq_len = ids.shape
    starts = doc_start.to(ids.device).clone()
    starts[:, 0] = True
    bounds = starts.flatten().nonzero().flatten()
    cu_seqlens = torch.cat([bounds, bounds.new_tensor([batch * seq_len])])
    logits = model(input_ids=ids.reshape(1, -1), use_cache=False, cu_seqlens=cu_seqlens).logits
    return logits.view(batch, seq_len, -1)
