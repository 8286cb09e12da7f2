"""Durable file writes and generated blocks of documentation files.

A generated block is the lines between a ``begin`` and an ``end`` marker line of a text file (a table
that a command produces, e.g. ``mcrnn estimate --table`` in docs/scaling.md, ``mcrnn demo --table`` in
the README); the command replaces it atomically and a test compares it with what the command makes.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's contents (a folder: its entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` durably: temporary file, fsync, rename, fsync of the folder."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def marked_block(doc: Path, begin: str, end: str) -> list[str]:
    """The lines between the line ``begin`` and the line ``end`` of ``doc``."""
    lines = Path(doc).read_text(encoding="utf-8").splitlines()
    if begin not in lines or end not in lines or lines.index(end) < lines.index(begin):
        raise ValueError(f"--write-docs: {doc} has no line {begin!r} followed by {end!r}")
    return lines[lines.index(begin) + 1 : lines.index(end)]


def replace_marked_block(doc: Path, begin: str, end: str, block: list[str]) -> None:
    """Replace the lines between the markers of ``doc`` with ``block``, atomically (a file without the
    markers is left as it was)."""
    marked_block(doc, begin, end)  # the markers are there, in order
    lines = Path(doc).read_text(encoding="utf-8").splitlines()
    first, last = lines.index(begin), lines.index(end)
    atomic_write_text(Path(doc), "\n".join([*lines[: first + 1], *block, *lines[last:]]) + "\n")
