"""Evaluation harnesses: MQAR recall, S-NIAH per context length, perplexity, length extrapolation.

All scores are teacher-forced (:func:`mcrnn.train.evaluate_lm`): MQAR accuracy is the fraction of
queried values predicted right; S-NIAH accuracy is the fraction of examples whose whole answer is
predicted right, i.e. exact-match greedy decoding; perplexity is ``exp`` of the mean token loss.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from mcrnn.data import MQARConfig, MQARDataset, NIAHConfig, NIAHDataset
from mcrnn.models import MCConfig, MCForCausalLM
from mcrnn.ops.spec import MATRIX_MEMORIES, check_memory
from mcrnn.train import evaluate_lm
from mcrnn.train.checkpoint import CONFIG_FILE, MODEL_FILE, read_weights


def load_model(path: str | Path) -> MCForCausalLM:
    """The model saved in folder ``path`` (a checkpoint or ``save_pretrained`` output), in eval mode.

    Every way the folder can be wrong is a one-line ``FileNotFoundError`` / ``ValueError`` naming the
    file: no folder, no or invalid ``config.json``, no or truncated ``model.safetensors``, weights whose
    names or shapes do not match the config.
    """
    path = Path(path)
    config_file, weights_file = path / CONFIG_FILE, path / MODEL_FILE
    if not config_file.is_file():
        raise FileNotFoundError(f"no model at {path} (expected {CONFIG_FILE} and {MODEL_FILE})")
    try:
        values = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"invalid JSON in {config_file}: {err}") from err
    if not isinstance(values, dict):
        raise ValueError(f"{config_file} must hold a JSON object, got {type(values).__name__}")
    if values.get("model_type", MCConfig.model_type) != MCConfig.model_type:
        raise ValueError(f"{config_file} has model_type {values['model_type']!r}, expected 'mcrnn'")
    try:
        config = MCConfig.from_dict(values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"invalid {config_file}: {err}") from err
    weights = read_weights(weights_file, config.tie_word_embeddings)
    model = MCForCausalLM(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{weights_file} does not match {config_file}: missing {missing[:3]}, unexpected {unexpected[:3]}"
            f" ({len(missing)} missing, {len(unexpected)} unexpected)"
        )
    for name, tensor in weights.items():
        if tensor.shape != expected[name].shape:
            raise ValueError(
                f"{weights_file} does not match {config_file}: {name} has shape {tuple(tensor.shape)} "
                f"in the weights, {tuple(expected[name].shape)} from the config"
            )
    model.load_state_dict(weights, strict=True)
    return model.eval()


def eval_mqar(model: nn.Module, config: MQARConfig, *, batch_size: int = 32) -> dict[str, float]:
    """``{"accuracy", "loss", ...}`` on one MQAR split."""
    return evaluate_lm(model, MQARDataset(config), batch_size=batch_size)


def eval_niah(
    model: nn.Module,
    tasks: Sequence[str],
    lengths: Sequence[int],
    *,
    num_examples: int = 20,
    seed: int = 0,
    batch_size: int = 4,
) -> dict[str, dict[int, float]]:
    """``{task: {context_length: accuracy}}`` (exact match of the needle's value)."""
    out: dict[str, dict[int, float]] = {}
    for task in tasks:
        out[task] = {}
        for length in lengths:
            data = NIAHDataset(
                NIAHConfig(task=task, context_length=length, num_examples=num_examples, seed=seed)
            )
            out[task][int(length)] = evaluate_lm(model, data, batch_size=batch_size)["sequence_accuracy"]
    return out


def eval_perplexity(
    model: nn.Module, dataset: Dataset, *, batch_size: int = 8, max_batches: int | None = None
):
    """``{"loss", "perplexity", "tokens", ...}`` over a text dataset."""
    return evaluate_lm(model, dataset, batch_size=batch_size, max_batches=max_batches)


def with_average_caching(model: MCForCausalLM, segment_size: int) -> MCForCausalLM:
    """Post-training MC (DESIGN.md §3 ``average``): the same weights, read through cached segments.

    A model trained with caching off (``segment_size=None``) gets ``segment_size`` and
    ``aggregation="average"``: every token reads the mean of its online and cached memories; no
    weight changes. A deep memory's inner chunk is part of the trained model (DESIGN.md §6), so the
    twin keeps the chunk the model ran with and ``segment_size`` must be a multiple of it (a one-line
    error otherwise: picking another chunk would silently score another model). Returns a new model on
    the same device, in the same dtype.
    """
    if isinstance(segment_size, bool) or not isinstance(segment_size, int) or segment_size < 1:
        raise ValueError(f"average segment_size must be an int >= 1, got {segment_size!r}")
    config = model.config
    chunk = None
    if config.memory not in MATRIX_MEMORIES:
        chunk = check_memory(config.mc_spec, config.memory, config.chunk_size)
        if segment_size % chunk:
            raise ValueError(
                f"average segment_size must be a multiple of the {config.memory} memory's inner chunk "
                f"{chunk} (part of the trained model), got {segment_size}"
            )
    values = config.to_dict()
    for key in ("model_type", "transformers_version", "architectures", "_name_or_path"):
        values.pop(key, None)
    values.update(
        segment_size=segment_size,
        segment_lengths=None,
        segmentation="constant",
        aggregation="average",
        ssc_top_k=None,
    )
    if chunk is not None:
        values["chunk_size"] = chunk
    weight = next(model.parameters())  # the twin in the model's dtype before the weights are copied in
    twin = MCForCausalLM(MCConfig(**values)).to(device=weight.device, dtype=weight.dtype)
    twin.load_state_dict(model.state_dict(), strict=True)
    return twin.eval()


def eval_extrapolation(
    model: MCForCausalLM,
    make_dataset: Callable[[int], Dataset],
    train_length: int,
    *,
    factors: Sequence[int] = (1, 2, 4),
    average_segment_size: int | None = None,
    metric: str = "accuracy",
    batch_size: int = 8,
) -> dict[str, dict[int, float]]:
    """``metric`` at ``factor * train_length`` for each factor: ``{"model": {length: score}}`` and, when
    ``average_segment_size`` is given, ``{"average": ...}`` for :func:`with_average_caching`."""
    for factor in factors:
        if not factor > 0:
            raise ValueError(f"factors must be > 0, got {list(factors)}")
    variants: dict[str, nn.Module] = {"model": model}
    if average_segment_size is not None:
        variants["average"] = with_average_caching(model, average_segment_size)
    out: dict[str, dict[int, float]] = {name: {} for name in variants}
    for factor in factors:
        length = int(factor * train_length)
        data = make_dataset(length)
        for name, variant in variants.items():
            with torch.no_grad():
                out[name][length] = evaluate_lm(variant, data, batch_size=batch_size)[metric]
    return out
