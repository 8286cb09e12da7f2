"""Atomic, durable training checkpoints that are only ever rotated within their own run.

Layout: ``<out_dir>/checkpoints/step_<N>/`` holds ``model.safetensors`` + ``config.json`` (loadable with
``MCForCausalLM.from_pretrained``; with the model's code files and ``auto_map`` when its classes are
registered for Auto classes, as mcrnn's are, so that ``AutoModelForCausalLM.from_pretrained(folder,
trust_remote_code=True)`` loads it in a process that never imported mcrnn), the tokenizer's files when
one is given (``AutoTokenizer.from_pretrained(folder)``), ``trainer_state.pt`` (optimizer, scheduler,
step = data position, RNG states; read back with ``torch.load(weights_only=True)``) and ``run.json`` (the
step, the kind of training data and the ``data:`` section that built it, and the run's ``lineage``: the
names of its checkpoints still kept, oldest first).

A checkpoint is written into a temporary folder, every file and the folder are fsynced, the folder is
renamed into place and the parent fsynced; then ``checkpoints/latest`` (a one-line file) is replaced the
same way. An interrupted save (Ctrl-C, crash, power loss) thus leaves the previous complete checkpoint
as ``latest``; temporary folders a killed save left behind are removed by the next save. A save that
meets a full disk removes its temporary folder, leaves ``latest`` as it was and raises
:class:`DiskFullError` naming the step, the folder and the last complete checkpoint.

Rotation deletes only checkpoints of the lineage being written (the run and the runs it resumed
from), the oldest first, never the checkpoint just written, so a resumed or restarted run cannot
delete checkpoints it did not write nor the one ``latest`` names.
"""

from __future__ import annotations

import copy
import errno
import inspect
import json
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mcrnn.retrofit.api import CONFIG_KEY
from mcrnn.retrofit.hub import add_model_code
from mcrnn.utils.files import atomic_write_text, fsync_path

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

MODEL_FILE = "model.safetensors"
STATE_FILE = "trainer_state.pt"
CONFIG_FILE = "config.json"
RUN_FILE = "run.json"
LATEST = "latest"
#: keys every trainer_state.pt holds (``rng_cuda`` and ``world_size`` are optional)
STATE_KEYS = ("step", "optimizer", "scheduler", "rng_cpu")
_STEP_NAME = re.compile(r"step_\d{8}")
_UNSAFE_GLOBAL = re.compile(r"GLOBAL (\S+) was not an allowed global")
#: what torch.save and safetensors say instead of ENOSPC when a write hits a full disk
_DISK_FULL_MARKS = ("unexpected pos", "file write failed", "no space left")
_TEMPORARY = (".tmp-step_*", ".stale-step_*", f".{LATEST}.tmp-*")


class DiskFullError(OSError):
    """A checkpoint could not be written for lack of space (its temporary folder is removed)."""


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def remove_stale_temporaries(root: Path) -> list[Path]:
    """Delete temporary folders and files that an interrupted save left in ``root``; returns them."""
    found = [p for pattern in _TEMPORARY for p in root.glob(pattern)]
    for path in found:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return found


def read_run_info(path: Path) -> dict:
    """``run.json`` of checkpoint ``path``; a checkpoint written before it existed is its own lineage."""
    file = path / RUN_FILE
    if not file.is_file():
        return {"lineage": [path.name]}
    try:
        info = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"corrupt {file}: {err}") from err
    if not isinstance(info, dict) or not isinstance(info.get("lineage"), list):
        raise ValueError(f"corrupt {file}: expected an object with a 'lineage' list")
    return info


def write_config_and_code(folder: Path, config: PretrainedConfig, model_class: type | None) -> None:
    """``config.json`` in ``folder``, with the code that loads it without the package imported.

    As ``save_pretrained`` does for classes registered with ``register_for_auto_class``: each of
    ``type(config)`` and ``model_class`` that is registered for an Auto class (``_auto_class``) has its
    source file copied into ``folder`` and is named in ``config.json``'s ``auto_map`` as
    ``{auto class: "<file stem>.<class name>"}``. Without ``model_class`` no code is written (a config's
    code alone loads no model). A retrofitted transformers model (``config.mcrnn_memory_caching``) gets
    the retrofit folder's code instead (:func:`mcrnn.retrofit.hub.add_model_code`), so the checkpoint
    loads with MC on through ``trust_remote_code=True``. ``config`` itself is not modified.
    """
    saved = copy.deepcopy(config)
    classes = (type(config), model_class) if model_class is not None else ()
    registered = [cls for cls in classes if getattr(cls, "_auto_class", None) is not None]
    if registered:
        saved.auto_map = dict(getattr(saved, "auto_map", None) or {})
    for cls in registered:
        source = Path(inspect.getfile(cls))
        shutil.copyfile(source, folder / source.name)
        saved.auto_map[cls._auto_class] = f"{source.stem}.{cls.__name__}"
    saved.to_json_file(folder / CONFIG_FILE)
    if model_class is not None and getattr(config, CONFIG_KEY, None):
        add_model_code(folder, model_class)


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    config: PretrainedConfig,
    trainer_state: dict,
    keep: int = 2,
    *,
    lineage: list[str] | None = None,
    data: str | None = None,
    model_class: type | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    data_config: dict | None = None,
) -> Path:
    """Write checkpoint ``step`` atomically and durably; returns its folder.

    ``lineage`` names the earlier kept checkpoints of this run (oldest first; from the ``run.json`` of
    the checkpoint it resumed from); after the save, all but the newest ``keep`` of ``lineage + [this]``
    are deleted. No other folder is touched. ``data`` names the kind of training data (``text``,
    ``mqar``, ...), recorded for evaluation, and ``data_config`` the config section that built it
    (compared on resume). ``config`` and ``model_class`` (the class of the model
    whose state is saved) get their code files and ``auto_map`` written (:func:`write_config_and_code`);
    ``tokenizer`` is written with its ``save_pretrained``.
    """
    root = Path(out_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(root)
    final = root / checkpoint_name(step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    kept = [name for name in (lineage or []) if name != final.name] + [final.name]
    deleted, kept = kept[:-keep], kept[-keep:]
    info = {"step": step, "data": data, "lineage": kept}
    if data_config is not None:
        info["data_config"] = data_config
    try:
        tmp.mkdir()
        _write_folder(tmp, model_state, config, trainer_state, info, model_class, tokenizer)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        _raise_if_disk_full(err, root, final)
        raise
    _move_into_place(tmp, final)
    try:
        atomic_write_text(root / LATEST, final.name + "\n")
    except BaseException as err:
        remove_stale_temporaries(root)  # the half-written `latest`
        if is_disk_full(err) and (latest_checkpoint(out_dir) or root).name != final.name:
            shutil.rmtree(final, ignore_errors=True)  # complete, but no `latest` names it: it would linger
        _raise_if_disk_full(err, root, final)
        raise
    for name in deleted:
        if _STEP_NAME.fullmatch(name):
            shutil.rmtree(root / name, ignore_errors=True)
    return final


def _write_folder(
    folder: Path,
    model_state: dict[str, torch.Tensor],
    config: PretrainedConfig,
    trainer_state: dict,
    info: dict,
    model_class: type | None,
    tokenizer: PreTrainedTokenizerBase | None,
) -> None:
    """Every file of a checkpoint into ``folder``, each fsynced, then the folder itself."""
    tensors = dict(model_state)
    if getattr(config, "tie_word_embeddings", False):
        tensors.pop("lm_head.weight", None)  # tied to the embedding; re-tied on load
    save_file({k: v.contiguous() for k, v in tensors.items()}, folder / MODEL_FILE, metadata={"format": "pt"})
    write_config_and_code(folder, config, model_class)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    torch.save(trainer_state, folder / STATE_FILE)
    (folder / RUN_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    for file in folder.iterdir():
        fsync_path(file)
    fsync_path(folder)


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename the written folder ``tmp`` to ``final`` (an older copy of that step is moved aside first,
    then deleted) and fsync their parent."""
    if final.exists():  # re-saving a step (after a resume): move the old copy aside first
        stale = final.with_name(f".stale-{final.name}-{os.getpid()}")
        os.replace(final, stale)
        os.replace(tmp, final)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_path(final.parent)


def is_disk_full(err: BaseException) -> bool:
    """True for a write that failed on a full disk: ``OSError`` ENOSPC (or EDQUOT), or the errors that
    ``torch.save`` (``inline_container``: "unexpected pos", "file write failed") and safetensors
    ("No space left on device") raise in its place."""
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    text = str(err).lower()
    return isinstance(err, (RuntimeError, SafetensorError)) and any(mark in text for mark in _DISK_FULL_MARKS)


def _raise_if_disk_full(err: BaseException, root: Path, final: Path) -> None:
    """Raise the one-line :class:`DiskFullError` (from ``err``) when ``err`` is a full disk."""
    if not is_disk_full(err):
        return
    try:
        last = latest_checkpoint(root.parent)
    except (OSError, ValueError):
        last = None
    where = f"step {int(last.name.removeprefix('step_'))} ({last})" if last is not None else "none"
    step = int(final.name.removeprefix("step_"))
    raise DiskFullError(
        f"no space left on device while writing checkpoint step {step} to {final}; the last complete "
        f"checkpoint is {where}"
    ) from err


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The folder named by ``checkpoints/latest``, or None when no checkpoint was completed."""
    pointer = Path(out_dir) / "checkpoints" / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text(encoding="utf-8").strip()
    if not _STEP_NAME.fullmatch(name):
        shown = repr(name) if name else "empty"
        raise ValueError(
            f"{pointer} is {shown}; expected the name of a checkpoint folder such as step_00000100"
        )
    path = pointer.parent / name
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint named by {pointer} is missing: {path}")
    return path


def read_weights(file: Path, tie_word_embeddings: bool) -> dict[str, torch.Tensor]:
    """The tensors of a ``model.safetensors`` file, the LM head re-tied to the embedding if it is tied.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming it for a corrupt one.
    """
    if not file.is_file():
        raise FileNotFoundError(f"model weights not found: {file}")
    try:
        weights = load_file(file)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"corrupt model weights in {file}: {err}") from err
    if tie_word_embeddings and "lm_head.weight" not in weights and "model.embed_tokens.weight" in weights:
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
    return weights


def read_trainer_state(file: Path) -> dict:
    """``trainer_state.pt`` read with ``weights_only=True``, checked to hold :data:`STATE_KEYS`."""
    if not file.is_file():
        raise FileNotFoundError(f"trainer state not found: {file}")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for truncated/corrupt files
        found = _UNSAFE_GLOBAL.search(str(err))
        what = f"it holds {found.group(1)}, which is never unpickled" if found else type(err).__name__
        raise ValueError(
            f"corrupt trainer state in {file}: not a torch checkpoint of tensors and plain values ({what})"
        ) from err
    if not isinstance(state, dict):
        raise ValueError(f"corrupt trainer state in {file}: expected a dict, got {type(state).__name__}")
    missing = [key for key in STATE_KEYS if key not in state]
    if missing:
        raise ValueError(f"trainer state {file} lacks {missing}; a checkpoint holds {list(STATE_KEYS)}")
    return state


def read_checkpoint(path: str | Path, tie_word_embeddings: bool) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a whole checkpoint into memory (nothing is applied yet, so a bad file never half-loads).

    Raises ``FileNotFoundError`` for a missing folder/file and ``ValueError`` for a corrupt one.
    """
    path = Path(path)
    for name in (MODEL_FILE, STATE_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(f"checkpoint {path} has no {name}")
    return read_weights(path / MODEL_FILE, tie_word_embeddings), read_trainer_state(path / STATE_FILE)
