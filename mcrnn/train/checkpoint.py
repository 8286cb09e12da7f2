"""Atomic training checkpoints.

Layout: ``<out_dir>/checkpoints/step_<N>/`` holds ``model.safetensors`` + ``config.json`` (loadable with
``MCForCausalLM.from_pretrained``) and ``trainer_state.pt`` (optimizer, scheduler, step = data position,
RNG states; read back with ``torch.load(weights_only=True)``). A checkpoint is written into a temporary
folder and renamed into place, then ``checkpoints/latest`` (a one-line file) is replaced atomically, so
an interrupted save (Ctrl-C, crash) leaves the previous complete checkpoint as ``latest``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

MODEL_FILE = "model.safetensors"
STATE_FILE = "trainer_state.pt"
LATEST = "latest"


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    config,
    trainer_state: dict,
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` atomically and keep the newest ``keep``; returns its folder."""
    root = Path(out_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-step_{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tensors = dict(model_state)
    if getattr(config, "tie_word_embeddings", False):
        tensors.pop("lm_head.weight", None)  # tied to the embedding; re-tied on load
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp / MODEL_FILE, metadata={"format": "pt"})
    config.to_json_file(tmp / "config.json")
    torch.save(trainer_state, tmp / STATE_FILE)
    if final.exists():  # re-saving a step (after a resume): move the old copy aside first
        stale = root / f".stale-step_{step:08d}-{os.getpid()}"
        os.replace(final, stale)
        shutil.rmtree(stale, ignore_errors=True)
    os.replace(tmp, final)
    _atomic_write_text(root / LATEST, final.name + "\n")
    for old in sorted(root.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The folder named by ``checkpoints/latest``, or None when no checkpoint was completed."""
    pointer = Path(out_dir) / "checkpoints" / LATEST
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text(encoding="utf-8").strip()
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint named by {pointer} is missing: {path}")
    return path


def read_checkpoint(path: str | Path, tie_word_embeddings: bool) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a whole checkpoint into memory (nothing is applied yet, so a bad file never half-loads).

    Raises ``FileNotFoundError`` for a missing folder/file and ``ValueError`` for a corrupt one.
    """
    path = Path(path)
    for name in (MODEL_FILE, STATE_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(f"checkpoint {path} has no {name}")
    try:
        weights = load_file(path / MODEL_FILE)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"corrupt model weights in {path / MODEL_FILE}: {err}") from err
    try:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for truncated/corrupt files
        raise ValueError(f"corrupt trainer state in {path / STATE_FILE}: {err}") from err
    if tie_word_embeddings and "lm_head.weight" not in weights and "model.embed_tokens.weight" in weights:
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
    return weights, state
