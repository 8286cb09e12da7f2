"""Language-modelling data from local ``.txt`` / ``.jsonl`` files.

Every file is read as UTF-8; a ``.jsonl`` file holds one JSON object per line and its ``field`` (default
``"text"``) is one document; any other file is one document. Documents are tokenized, joined with the
tokenizer's ``eos_id`` and cut into consecutive windows of ``seq_len + 1`` tokens; window ``i`` gives
``input_ids = w[:-1]`` and ``labels = w[1:]``. ``split="val"`` takes the last ``val_fraction`` of the
token stream and ``"train"`` the rest, so the two never overlap.

``separate_documents=True`` keeps documents apart inside a window: items also carry ``doc_start``
[seq_len] (True at the first token of every document but the window's first), the training loop turns
it into ``cu_seqlens`` for the model (no state crosses a boundary), and the label of a document's
end-of-document token (the next document's first token) is ignored.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from mcrnn.data.mqar import IGNORE_INDEX
from mcrnn.data.tokenizer import Tokenizer, get_tokenizer


def check_window_options(seq_len: object, split: object, val_fraction: object) -> None:
    """The options every windowed dataset takes: ``seq_len`` an int >= 1, ``split`` one of
    ``train | val | all`` and ``val_fraction`` in (0, 1); ``ValueError`` naming the bad one."""
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be an int >= 1, got {seq_len!r}")
    if split not in ("train", "val", "all"):
        raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")


def jsonl_documents(lines: Iterable[str], path: Path, field: str = "text") -> Iterator[str]:
    """The ``field`` of every JSON object in ``lines`` (blank lines skipped); a bad line is a
    ``ValueError`` naming ``path:line``."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"invalid JSON at {path}:{number} ({err})") from err
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            raise ValueError(f"{path}:{number} has no string field {field!r}")
        yield record[field]


def read_documents(path: str | Path, field: str = "text") -> list[str]:
    """Documents of one file; clear errors naming the path for missing, empty or undecodable files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"data file is not valid UTF-8: {path} ({err})") from err
    if not text.strip():
        raise ValueError(f"data file is empty: {path}")
    if path.suffix != ".jsonl":
        return [text]
    docs = list(jsonl_documents(text.splitlines(), path, field))
    if not docs:
        raise ValueError(f"data file has no documents: {path}")
    return docs


def tokenize_files(paths: Sequence[str | Path], tokenizer: Tokenizer, field: str = "text") -> torch.Tensor:
    """One LongTensor stream: the documents of all files, each followed by ``eos_id``."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise ValueError("paths must name at least one data file")
    ids: list[int] = []
    for path in paths:
        for doc in read_documents(path, field):
            ids.extend(tokenizer.encode(doc))
            ids.append(tokenizer.eos_id)
    return torch.tensor(ids, dtype=torch.long)


def window_item(window: torch.Tensor, eos_id: int | None = None) -> dict[str, torch.Tensor]:
    """``{"input_ids": w[:-1], "labels": w[1:]}`` of a window ``w`` of ``seq_len + 1`` tokens; with
    ``eos_id`` (documents kept apart) also ``doc_start``, True at the token after each ``eos_id``, and no
    target across a boundary (the label of an ``eos_id`` input is ``IGNORE_INDEX``)."""
    item = {"input_ids": window[:-1], "labels": window[1:]}
    if eos_id is not None:
        ends = item["input_ids"] == eos_id
        item["labels"] = item["labels"].masked_fill(ends, IGNORE_INDEX)
        item["doc_start"] = torch.nn.functional.pad(ends[:-1], (1, 0))
    return item


class TextDataset(Dataset):
    """Consecutive windows of a tokenized file stream; item ``i`` is ``{"input_ids", "labels"}`` [seq_len]."""

    def __init__(
        self,
        paths: Sequence[str | Path] | str | Path,
        seq_len: int,
        *,
        tokenizer: Tokenizer | str | None = None,
        split: str = "train",
        val_fraction: float = 0.1,
        field: str = "text",
        separate_documents: bool = False,
    ) -> None:
        check_window_options(seq_len, split, val_fraction)
        self.tokenizer = get_tokenizer(tokenizer)
        stream = tokenize_files(paths, self.tokenizer, field)
        cut = int(len(stream) * (1.0 - val_fraction))
        stream = {"train": stream[:cut], "val": stream[cut:], "all": stream}[split]
        self.seq_len = seq_len
        self.num_windows = (len(stream) - 1) // seq_len
        if self.num_windows < 1:
            raise ValueError(
                f"split {split!r} of {paths} has {len(stream)} tokens, fewer than seq_len + 1 = {seq_len + 1}"
            )
        self.stream = stream
        self.separate_documents = bool(separate_documents)

    def __len__(self) -> int:
        return self.num_windows

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.num_windows:
            raise IndexError(f"index {index} out of range for {self.num_windows} windows")
        window = self.stream[index * self.seq_len : (index + 1) * self.seq_len + 1]
        return window_item(window, self.tokenizer.eos_id if self.separate_documents else None)
