"""One training per ``out_dir``: the run holds the folder with a lock file while it runs.

``<out_dir>/train.lock`` holds one JSON line ``{"pid", "host", "started"}`` and is created with
``O_CREAT | O_EXCL`` (the file system lets exactly one process create it). It is removed when the run
ends, by an exception or Ctrl-C too. A lock whose process is gone (same host, no such pid: a run
killed with SIGKILL, a crashed machine) is stale: the next run takes it over with a one-line warning.
A lock held by a live process, or by a process on another host (whose liveness cannot be checked from
here), refuses the run in one line naming the folder and the holder ``pid@host``.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

LOCK_FILE = "train.lock"


class OutDirBusy(OSError):
    """Another live training holds the folder."""


def read_lock(path: Path) -> dict | None:
    """The lock's record ``{"pid", "host", "started"}``, or None when there is no lock file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("pid"), int):
        raise ValueError(
            f"out_dir {path.parent} holds an unreadable lock {path} ({text[:40]!r}); remove it if no "
            "training runs there"
        )
    return record


def is_stale(record: dict) -> bool:
    """True for the lock of a process on this host that no longer exists."""
    if record.get("host") != socket.gethostname():
        return False
    try:
        os.kill(record["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by another user
        return False
    return False


def describe(record: dict) -> str:
    """``pid <pid>@<host>, started <time>`` of a lock record."""
    return f"pid {record['pid']}@{record.get('host')}, started {record.get('started')}"


def busy_error(out_dir: str | Path, record: dict) -> OutDirBusy:
    return OutDirBusy(
        f"out_dir {out_dir} is in use by another training ({describe(record)}); wait for it to end, "
        "stop it, or train into another out_dir"
    )


def check_free(out_dir: str | Path | None) -> None:
    """Raise :class:`OutDirBusy` when a live run holds ``out_dir`` (a stale or absent lock passes)."""
    if not out_dir:
        return
    record = read_lock(Path(out_dir) / LOCK_FILE)
    if record is not None and not is_stale(record):
        raise busy_error(out_dir, record)


class OutDirLock:
    """Context manager holding ``out_dir`` for this process (see the module docstring); ``None`` as
    ``out_dir`` holds nothing."""

    def __init__(self, out_dir: str | Path | None) -> None:
        self.path = Path(out_dir) / LOCK_FILE if out_dir else None
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.record = {"pid": os.getpid(), "host": socket.gethostname(), "started": started}

    def __enter__(self) -> OutDirLock:
        if self.path is None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while not self._create():
            record = read_lock(self.path)
            if record is None:
                continue  # released between our attempt and the read: try again
            if not is_stale(record):
                raise busy_error(self.path.parent, record)
            print(
                f"warning: taking over the stale lock of {self.path.parent} ({describe(record)})",
                file=sys.stderr,
            )
            self._remove_stale(record)
        return self

    def _create(self) -> bool:
        """Create the lock file holding our record; False when it exists already."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(self.record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return True

    def _remove_stale(self, record: dict) -> None:
        """Move the lock aside atomically and delete it if it is still ``record``; a lock another run
        created meanwhile is put back, so two runs taking over one stale lock never both win."""
        aside = self.path.with_name(f"{LOCK_FILE}.stale-{os.getpid()}")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return
        if read_lock(aside) != record:
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
        aside.unlink(missing_ok=True)

    def __exit__(self, *exc_info: object) -> None:
        if self.path is None:
            return
        try:
            record = read_lock(self.path)
        except ValueError:
            return
        if record is not None and (record["pid"], record.get("host")) == (
            self.record["pid"],
            self.record["host"],
        ):
            self.path.unlink(missing_ok=True)
