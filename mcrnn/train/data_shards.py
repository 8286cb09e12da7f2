"""Token shards: text tokenized once into memory-mapped files, and the training dataset that reads them.

A shard folder holds ``shard_00000.bin, shard_00001.bin, ...`` (raw little-endian token ids, ``uint16``
when the vocabulary fits in 65,536 ids, else ``uint32``) and ``index.json``::

    {"format": "mcrnn-token-shards", "version": 1, "dtype": "uint16", "tokenizer": "byte",
     "vocab_size": 257, "eos_id": 256, "field": "text", "sources": [...],
     "shards": [{"file": "shard_00000.bin", "tokens": 1115394, "documents": 1}, ...],
     "tokens": 1115394, "documents": 1}

Every document is followed by ``eos_id``; documents are never split across shards, so a shard holds
about ``shard_tokens`` tokens (it is closed after the document that reaches the limit). Shards are
written under a temporary name and renamed, and ``index.json`` last, so a folder with an index is
complete: an interrupted preparation leaves no index and is simply run again.

:class:`TokenShardDataset` cuts each shard into consecutive windows of ``seq_len + 1`` tokens (a window
never crosses a shard's end) and numbers them shard after shard; the last ``val_fraction`` of the
windows are the ``val`` split. Item ``i`` is a pure function of ``i`` (a slice of a memory map), so the
training loop's sampler (:mod:`mcrnn.train.sampler`: a seeded permutation per epoch, cut into global
batches, each process taking its slots) gives every rank its windows deterministically and a resumed
run exactly the windows an uninterrupted one would have read.
"""

from __future__ import annotations

import bisect
import importlib.util
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mcrnn.data.text import check_window_options, jsonl_documents, window_item
from mcrnn.data.tokenizer import Tokenizer, get_tokenizer

INDEX_FILE = "index.json"
FORMAT = "mcrnn-token-shards"
SUFFIXES = (".txt", ".jsonl", ".parquet")
#: documents tokenized per call (a Hugging Face fast tokenizer encodes a batch on several threads)
ENCODE_BATCH = 256


def token_dtype(vocab_size: int) -> np.dtype:
    """``uint16`` when every id fits (``vocab_size <= 65536``), else ``uint32``."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """The data files named by ``inputs``: files as given, folders searched recursively for ``.txt``,
    ``.jsonl`` and ``.parquet`` files (sorted, so the token order is reproducible)."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
            if not found:
                raise ValueError(f"inputs: folder {item} holds no {'/'.join(SUFFIXES)} files")
            files.extend(found)
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"inputs: no such file or folder: {item}")
    if not files:
        raise ValueError("inputs: name at least one .txt/.jsonl/.parquet file or folder")
    return files


def iter_documents(path: Path, field: str = "text") -> Iterator[str]:
    """Stream the documents of one file: a ``.jsonl`` line's ``field``, a ``.parquet`` row's ``field``
    column (needs pyarrow), or a whole other file (UTF-8); errors name the file (and line)."""
    if path.suffix == ".parquet":
        if importlib.util.find_spec("pyarrow") is None:
            raise ValueError(f"reading {path} needs pyarrow (pip install pyarrow)")
        import pyarrow.parquet as pq

        table = pq.ParquetFile(path)
        if field not in table.schema_arrow.names:
            raise ValueError(f"{path} has no column {field!r}; columns: {table.schema_arrow.names}")
        for batch in table.iter_batches(columns=[field], batch_size=ENCODE_BATCH):
            yield from (text for text in batch.column(0).to_pylist() if text)
        return
    if path.suffix != ".jsonl":
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"data file is not valid UTF-8: {path} ({err})") from err
        if text:
            yield text
        return
    with path.open(encoding="utf-8") as handle:
        yield from jsonl_documents(handle, path, field)


def encode_documents(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text: one batched call when the tokenizer has ``encode_batch``."""
    batched = getattr(tokenizer, "encode_batch", None)
    return batched(texts) if batched is not None else [tokenizer.encode(text) for text in texts]


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsynced, then renamed over it."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def prepare_shards(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    tokenizer: str = "byte",
    field: str = "text",
    shard_tokens: int = 2**27,
    overwrite: bool = False,
) -> dict:
    """Tokenize the documents of ``inputs`` (files or folders, see :func:`expand_inputs`) with
    ``tokenizer`` (``"byte"`` or a Hugging Face name or path) into token shards in ``out_dir``; returns
    the index (also written to ``out_dir/index.json``)."""
    if isinstance(shard_tokens, bool) or not isinstance(shard_tokens, int) or shard_tokens < 1:
        raise ValueError(f"shard_tokens must be an int >= 1, got {shard_tokens!r}")
    files = expand_inputs(inputs)
    out = Path(out_dir)
    if (out / INDEX_FILE).exists() and not overwrite:
        raise ValueError(f"out_dir {out} already holds token shards; replace them with --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("shard_*.bin*"):
        stale.unlink()
    (out / INDEX_FILE).unlink(missing_ok=True)
    tok = get_tokenizer(tokenizer)
    dtype = token_dtype(tok.vocab_size)
    shards: list[dict] = []
    pending: list[np.ndarray] = []
    pending_docs = pending_tokens = 0

    def flush() -> None:
        nonlocal pending, pending_docs, pending_tokens
        if not pending:
            return
        name = f"shard_{len(shards):05d}.bin"
        tokens = np.concatenate(pending)
        _write_atomic(out / name, tokens.astype(dtype.newbyteorder("<"), copy=False).tobytes())
        shards.append({"file": name, "tokens": int(tokens.size), "documents": pending_docs})
        pending, pending_docs, pending_tokens = [], 0, 0

    def add(texts: list[str]) -> None:
        nonlocal pending_docs, pending_tokens
        for ids in encode_documents(tok, texts):
            pending.append(np.asarray([*ids, tok.eos_id], dtype=np.int64))
            pending_docs += 1
            pending_tokens += len(pending[-1])
            if pending_tokens >= shard_tokens:
                flush()

    for path in files:
        texts: list[str] = []
        for text in iter_documents(path, field):
            texts.append(text)
            if len(texts) == ENCODE_BATCH:
                add(texts)
                texts = []
        add(texts)
    flush()
    if not shards:
        raise ValueError(f"inputs {[str(p) for p in files]} hold no documents")
    index = {
        "format": FORMAT,
        "version": 1,
        "dtype": dtype.name,
        "tokenizer": str(tokenizer),
        "vocab_size": int(tok.vocab_size),
        "eos_id": int(tok.eos_id),
        "field": field,
        "sources": [str(p) for p in files],
        "shards": shards,
        "tokens": sum(s["tokens"] for s in shards),
        "documents": sum(s["documents"] for s in shards),
    }
    _write_atomic(out / INDEX_FILE, (json.dumps(index, indent=1) + "\n").encode())
    return index


def read_index(path: str | Path) -> dict:
    """The ``index.json`` of a shard folder, checked (format, dtype, every shard file's size)."""
    folder = Path(path)
    file = folder / INDEX_FILE
    if not file.is_file():
        raise FileNotFoundError(f"no {INDEX_FILE} in {folder}: prepare the shards with `mcrnn prepare-data`")
    try:
        index = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"invalid JSON in {file} ({err})") from err
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ValueError(f"{file} is not an index of {FORMAT} (format {index.get('format')!r})")
    if index.get("dtype") not in ("uint16", "uint32"):
        raise ValueError(f"{file}: dtype must be uint16 or uint32, got {index.get('dtype')!r}")
    itemsize = np.dtype(index["dtype"]).itemsize
    for shard in index["shards"]:
        shard_path = folder / shard["file"]
        size = shard_path.stat().st_size if shard_path.is_file() else None
        if size != shard["tokens"] * itemsize:
            raise ValueError(
                f"shard {shard_path} has {size} bytes, the index says {shard['tokens']} x {itemsize}"
            )
    return index


class TokenShardDataset(Dataset):
    """Windows of ``seq_len + 1`` tokens from the shards in ``path``; item ``i`` is ``{"input_ids",
    "labels"}`` [seq_len] (plus ``doc_start`` with ``separate_documents``, as in
    :class:`~mcrnn.data.TextDataset`).

    Args:
        path: a folder written by :func:`prepare_shards` (``mcrnn prepare-data``), or a list of them
            (prepared in parallel from parts of a corpus) with the same tokenizer, read in order.
        seq_len: tokens per training sequence.
        split: ``train`` (all but the last ``val_fraction`` of the windows), ``val`` (those) or ``all``.
        val_fraction: share of the windows held out for ``val``, in (0, 1); at least one window.
        separate_documents: keep documents apart inside a window (``doc_start``; no target across one).
    """

    def __init__(
        self,
        path: str | Path | Sequence[str | Path],
        seq_len: int,
        *,
        split: str = "train",
        val_fraction: float = 0.001,
        separate_documents: bool = False,
    ) -> None:
        check_window_options(seq_len, split, val_fraction)
        folders = [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]
        if not folders:
            raise ValueError("path must name at least one shard folder")
        indexes = [read_index(folder) for folder in folders]
        keys = ("dtype", "tokenizer", "vocab_size", "eos_id")
        first = {key: indexes[0][key] for key in keys}
        for folder, index in zip(folders[1:], indexes[1:], strict=True):
            other = {key: index[key] for key in keys}
            if other != first:
                raise ValueError(f"shard folder {folder} has {other}, but {folders[0]} has {first}")
        self.folders = folders
        self.tokenizer_name = str(first["tokenizer"])
        self._tokenizer: Tokenizer | None = None
        self.seq_len = seq_len
        self.eos_id = int(first["eos_id"]) if separate_documents else None
        dtype = np.dtype(first["dtype"]).newbyteorder("<")
        self.shards = [
            np.memmap(folder / s["file"], dtype=dtype, mode="r")
            for folder, index in zip(folders, indexes, strict=True)
            for s in index["shards"]
        ]
        #: first global window of each shard, and the total after the last
        self.offsets = [0]
        for shard in self.shards:
            self.offsets.append(self.offsets[-1] + max(len(shard) - 1, 0) // seq_len)
        total = self.offsets[-1]
        val = max(1, int(total * val_fraction))
        bounds = {"train": (0, total - val), "val": (total - val, total), "all": (0, total)}
        self.first, self.stop = bounds[split]
        if self.stop - self.first < 1:
            tokens = sum(len(shard) for shard in self.shards)
            raise ValueError(
                f"split {split!r} of {', '.join(map(str, folders))} has no window of seq_len + 1 = "
                f"{seq_len + 1} tokens ({tokens} tokens in {len(self.shards)} shard(s), "
                f"val_fraction={val_fraction})"
            )
        if split == "val" and len(self) == 1:
            print(
                f"warning: the val split of {', '.join(map(str, folders))} is 1 window of {seq_len} tokens "
                f"(val_fraction={val_fraction} of {total} windows): its loss and perplexity are noise; "
                "raise val_fraction or add data",
                file=sys.stderr,
            )

    @property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer the shards were prepared with (the index's ``tokenizer``), loaded when first
        asked for; the training loop saves its ``transformers`` form with every checkpoint."""
        if self._tokenizer is None:
            self._tokenizer = get_tokenizer(self.tokenizer_name)
        return self._tokenizer

    def __len__(self) -> int:
        return self.stop - self.first

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} windows")
        window = self.first + index
        shard = bisect.bisect_right(self.offsets, window) - 1
        start = (window - self.offsets[shard]) * self.seq_len
        tokens = torch.from_numpy(self.shards[shard][start : start + self.seq_len + 1].astype(np.int64))
        return window_item(tokens, self.eos_id)
