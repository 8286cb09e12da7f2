"""Run a training job described by a YAML file.

```yaml
model:        # any MCConfig field
  vocab_size: 257
  hidden_size: 128
  aggregation: grm
  segment_size: 64
data:         # type: mqar | niah | text | shards (mcrnn prepare-data), then that dataset's parameters
  type: text
  paths: [data/tinyshakespeare.txt]
  seq_len: 256
eval_data:    # optional; for text and shards the default is the validation split of the same data
  type: text
  ...
train:        # any TrainOptions field
  steps: 2000
  batch_size: 32
  out_dir: runs/shakespeare
```

Or start from a saved model and retrofit Memory Caching onto it (docs/retrofit.md):

```yaml
model: {pretrained: path/to/folder}     # AutoModelForCausalLM.from_pretrained
retrofit: {segment_size: 64, aggregation: grm, router: learned}   # add_memory_caching's keywords
train: {trainable: router, ...}         # only the learned router's parameters train
```
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from torch.utils.data import Dataset

from mcrnn.data import MQARConfig, MQARDataset, NIAHConfig, NIAHDataset, TextDataset
from mcrnn.models import MCConfig, MCForCausalLM
from mcrnn.retrofit import CONFIG_KEY, add_memory_caching
from mcrnn.train.data_shards import TokenShardDataset
from mcrnn.train.lock import check_free
from mcrnn.train.loop import TrainResult, train
from mcrnn.train.options import TrainOptions, unknown_key_error
from mcrnn.train.out_dir import check_out_dir

SECTIONS = ("model", "retrofit", "data", "eval_data", "train")
#: data.type -> the constructor its parameters go to (NIAH also takes ``tokenizer``)
DATA_TYPES: dict[str, Callable] = {
    "mqar": MQARConfig,
    "niah": NIAHConfig,
    "text": TextDataset.__init__,
    "shards": TokenShardDataset.__init__,
}
#: data types with a validation split of the same source (the default ``eval_data``)
SPLIT_TYPES = ("text", "shards")


def load_config(path: str | Path) -> dict:
    """Parse and check the YAML file: a mapping with the sections ``model``, ``data``, ``train``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"invalid YAML in {path}: {' '.join(str(err).split())}") from err
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold a mapping with sections {SECTIONS}")
    for section in raw:
        if section not in SECTIONS:
            raise unknown_key_error(str(path), section, SECTIONS)
    for section in ("model", "data"):
        if not isinstance(raw.get(section), dict):
            raise ValueError(f"{path}: section {section!r} is required and must be a mapping")
    for section in ("retrofit", "eval_data", "train"):
        if raw.get(section) is not None and not isinstance(raw[section], dict):
            raise ValueError(f"{path}: section {section!r} must be a mapping")
    return raw


def _parameters(constructor: Callable) -> dict[str, inspect.Parameter]:
    """Keyword parameters of ``constructor`` (no ``self``, ``*args`` or ``**kwargs``)."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    params = inspect.signature(constructor).parameters
    return {name: p for name, p in params.items() if name != "self" and p.kind in kinds}


def _check_keys(section: str, values: dict, known: set[str], required: set[str] = frozenset()) -> None:
    """One-line error for a key of ``section`` that is not ``known`` (with the closest known key) or a
    ``required`` key that is absent."""
    for key in values:
        if key not in known:
            raise unknown_key_error(section, key, known)
    missing = sorted(required - set(values))
    if missing:
        raise ValueError(f"{section}: missing required key(s) {missing}")


def _yaml_numbers(values: dict, defaults: dict[str, object]) -> dict:
    """PyYAML reads ``1e-3`` (no dot) as a string: turn such strings into floats where the default is
    a float, so ``lr: 1e-3`` means what it says. Other values are left for validation."""
    out = dict(values)
    for key, value in values.items():
        default = defaults.get(key)
        if isinstance(value, str) and isinstance(default, float):
            try:
                out[key] = float(value)
            except ValueError:
                raise ValueError(f"{key} must be a number, got {value!r}") from None
    return out


def model_keys() -> set[str]:
    """The keys a ``model:`` section may hold: ``MCConfig``'s parameters and its serialised fields."""
    return set(_parameters(MCConfig.__init__)) | set(MCConfig().to_dict())


def build_model_config(values: dict, section: str = "model") -> MCConfig:
    """``MCConfig`` from a ``model:`` section; an unknown key is an error naming the closest valid one."""
    _check_keys(section, values, model_keys())
    defaults = {name: p.default for name, p in _parameters(MCConfig.__init__).items()}
    return MCConfig(**_yaml_numbers(values, defaults))


def load_pretrained(folder: str | Path) -> torch.nn.Module:
    """``AutoModelForCausalLM.from_pretrained(folder)``: mcrnn folders load through ``import mcrnn``,
    transformers models natively; a retrofitted folder (``config.json`` holds
    ``mcrnn_memory_caching``) with its own code (``trust_remote_code``), so MC is on as it was saved."""
    from transformers import AutoModelForCausalLM

    config_file = Path(folder) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"model.pretrained: no model folder (config.json) at {folder}")
    retrofitted = CONFIG_KEY in json.loads(config_file.read_text(encoding="utf-8"))
    return AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=retrofitted)


def build_model(raw: dict) -> torch.nn.Module:
    """The model of a parsed config: ``MCForCausalLM`` of the ``model:`` section, or the folder of
    ``model: {pretrained: DIR}``; then, with a ``retrofit:`` section, ``add_memory_caching(model,
    **retrofit)`` (an unknown key of either section names the closest valid one)."""
    values = raw["model"]
    if "pretrained" in values:
        _check_keys("model (pretrained)", values, {"pretrained"})
        model = load_pretrained(values["pretrained"])
    else:
        model = MCForCausalLM(build_model_config(values))
    settings = raw.get("retrofit")
    if settings is not None:
        keys = set(_parameters(add_memory_caching)) - {"model"}
        _check_keys("retrofit", settings, keys)
        add_memory_caching(model, **settings)
    return model


def build_dataset(spec: dict, split: str = "train", section: str = "data") -> Dataset:
    """A dataset from ``{"type": "mqar"|"niah"|"text"|"shards", ...parameters}``; ``section`` names the YAML
    section in errors (an unknown or missing key, a bad type)."""
    spec = dict(spec)
    kind = spec.pop("type", None)
    if kind not in DATA_TYPES:
        raise ValueError(f"{section}.type must be one of {tuple(DATA_TYPES)}, got {kind!r}")
    params = _parameters(DATA_TYPES[kind])
    known = set(params) | ({"tokenizer"} if kind == "niah" else set())
    required = {name for name, p in params.items() if p.default is inspect.Parameter.empty}
    _check_keys(f"{section} (type {kind!r})", spec, known, required)
    spec = _yaml_numbers(spec, {name: p.default for name, p in params.items()})
    if kind == "mqar":
        return MQARDataset(MQARConfig(**spec))
    if kind == "niah":
        tokenizer = spec.pop("tokenizer", None)
        return NIAHDataset(NIAHConfig(**spec), tokenizer)
    if kind == "shards":
        return TokenShardDataset(spec.pop("path"), split=spec.pop("split", split), **spec)
    paths = spec.pop("paths")
    if not paths:
        raise ValueError(f"{section}.paths must list at least one .txt/.jsonl file for type 'text'")
    return TextDataset(paths, split=spec.pop("split", split), **spec)


def build_options(raw: dict, overrides: dict | None = None) -> TrainOptions:
    """``TrainOptions`` from the ``train:`` section of a parsed config, with ``overrides`` on top."""
    train_values = {**(raw.get("train") or {}), **(overrides or {})}
    return TrainOptions.from_dict(_yaml_numbers(train_values, TrainOptions().to_dict()))


def run_config(
    raw: dict,
    *,
    resume: bool = False,
    overwrite: bool = False,
    overrides: dict | None = None,
    allow_data_change: bool = False,
) -> TrainResult:
    """Build the model, data and options of a parsed config and train (see :func:`train`; a resume
    with a changed ``data:`` section is refused unless ``allow_data_change``)."""
    options = build_options(raw, overrides)
    check_free(options.out_dir)  # before the data is read, which may take long
    check_out_dir(options.out_dir, resume, overwrite)
    if "pretrained" not in raw["model"]:
        build_model_config(raw["model"])  # its errors before the data is read
    train_data = build_dataset(raw["data"], "train")
    eval_spec = raw.get("eval_data")
    if eval_spec is None and raw["data"].get("type") in SPLIT_TYPES:
        eval_spec = {**raw["data"], "split": "val"}
    eval_data = build_dataset(eval_spec, "val", section="eval_data") if eval_spec is not None else None
    torch.manual_seed(options.seed)  # the same initial weights in every process and every run
    model = build_model(raw)
    return train(
        model,
        train_data,
        options,
        eval_data=eval_data,
        resume=resume,
        overwrite=overwrite,
        data_config=raw["data"],
        allow_data_change=allow_data_change,
    )
