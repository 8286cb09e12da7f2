"""The run's folder: a fresh run never overwrites another run's outputs, ``overwrite`` clears them,
and the run holds the folder while it trains (:mod:`mcrnn.train.lock`, agreed by every process)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch

from mcrnn.train import distributed as D
from mcrnn.train.checkpoint import latest_checkpoint
from mcrnn.train.lock import OutDirBusy, OutDirLock

#: what a run writes into ``out_dir``; a folder holding any of them holds a run
RUN_OUTPUTS = ("metrics.jsonl", "checkpoints", "tensorboard", "loss.png")


def check_out_dir(out_dir: str | None, resume: bool, overwrite: bool) -> None:
    """Refuse to start a fresh run where one already wrote its outputs, unless told to continue it
    (``resume``) or to replace it (``overwrite``), and to resume where there is no checkpoint."""
    if resume and overwrite:
        raise ValueError("give resume (--resume) or overwrite (--overwrite), not both")
    if resume and out_dir and latest_checkpoint(out_dir) is None:
        raise ValueError(
            f"nothing to resume: {out_dir} holds no complete checkpoint; start without resume (--resume), "
            "with overwrite (--overwrite) if it holds an earlier run's files"
        )
    if not out_dir or resume or overwrite:
        return
    found = [name for name in RUN_OUTPUTS if (Path(out_dir) / name).exists()]
    if found:
        raise ValueError(
            f"out_dir {out_dir} already holds a run ({', '.join(found)}); continue it with --resume or "
            "replace it with --overwrite"
        )


def remove_run_outputs(out_dir: str) -> None:
    """Delete what an earlier run wrote into ``out_dir`` (:data:`RUN_OUTPUTS`), nothing else."""
    for name in RUN_OUTPUTS:
        path = Path(out_dir) / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


@contextmanager
def hold_out_dir(out_dir: str | None, ctx: D.DistContext) -> Iterator[None]:
    """Hold ``out_dir`` for the run (:class:`~mcrnn.train.lock.OutDirLock`, taken by the main process);
    every process stops when the main one cannot take it, none waits on a barrier for ever."""
    with ExitStack() as stack:
        error = None
        try:
            stack.enter_context(OutDirLock(out_dir if ctx.is_main else None))
        except (OSError, ValueError) as err:
            error = err
        if ctx.distributed:
            failed = D.all_reduce_sum(torch.tensor(float(error is not None), device=ctx.device), ctx)
            if error is None and failed.item():
                raise OutDirBusy(f"out_dir {out_dir}: the main process could not hold it (see its error)")
        if error is not None:
            raise error
        yield
