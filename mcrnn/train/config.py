"""Run a training job described by a YAML file.

```yaml
model:        # any MCConfig field
  vocab_size: 257
  hidden_size: 128
  aggregation: grm
  segment_size: 64
data:         # type: mqar | niah | text, then that dataset's parameters
  type: text
  paths: [data/tinyshakespeare.txt]
  seq_len: 256
eval_data:    # optional; for text the default is the validation split of the same files
  type: text
  ...
train:        # any TrainOptions field
  steps: 2000
  batch_size: 32
  out_dir: runs/shakespeare
```
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from torch.utils.data import Dataset

from mcrnn.data import MQARConfig, MQARDataset, NIAHConfig, NIAHDataset, TextDataset
from mcrnn.models import MCConfig, MCForCausalLM
from mcrnn.train.loop import TrainResult, train
from mcrnn.train.options import TrainOptions

SECTIONS = ("model", "data", "eval_data", "train")


def load_config(path: str | Path) -> dict:
    """Parse and check the YAML file: a mapping with the sections ``model``, ``data``, ``train``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"invalid YAML in {path}: {err}") from err
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold a mapping with sections {SECTIONS}")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {unknown}; known: {list(SECTIONS)}")
    for section in ("model", "data"):
        if not isinstance(raw.get(section), dict):
            raise ValueError(f"{path}: section {section!r} is required and must be a mapping")
    return raw


def build_dataset(spec: dict, split: str = "train") -> Dataset:
    """A dataset from ``{"type": "mqar"|"niah"|"text", ...parameters}``."""
    spec = dict(spec)
    kind = spec.pop("type", None)
    if kind == "mqar":
        return MQARDataset(MQARConfig(**spec))
    if kind == "niah":
        tokenizer = spec.pop("tokenizer", None)
        return NIAHDataset(NIAHConfig(**spec), tokenizer)
    if kind == "text":
        paths = spec.pop("paths", None)
        if not paths:
            raise ValueError("data.paths must list at least one .txt/.jsonl file for type 'text'")
        return TextDataset(paths, split=spec.pop("split", split), **spec)
    raise ValueError(f"data.type must be one of ('mqar', 'niah', 'text'), got {kind!r}")


def run_config(raw: dict, *, resume: bool = False, overrides: dict | None = None) -> TrainResult:
    """Build the model, data and options of a parsed config and train."""
    options = TrainOptions.from_dict({**(raw.get("train") or {}), **(overrides or {})})
    train_data = build_dataset(raw["data"], "train")
    eval_spec = raw.get("eval_data")
    if eval_spec is None and raw["data"].get("type") == "text":
        eval_spec = {**raw["data"], "split": "val"}
    eval_data = build_dataset(eval_spec, "val") if eval_spec is not None else None
    torch.manual_seed(options.seed)  # the same initial weights in every process and every run
    model = MCForCausalLM(MCConfig(**raw["model"]))
    return train(model, train_data, options, eval_data=eval_data, resume=resume)
