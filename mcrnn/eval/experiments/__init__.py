"""``mcrnn experiment NAME``: reproducible experiments of the paper's claims, with a results page.

One module per experiment (``recall``, ``niah``, ``lm``, ``post_training``, ``ordering``), each with
``NAME``, a ``Settings`` dataclass (its defaults), ``QUICK`` (the smoke-test sizes), ``plan(settings,
seeds)`` (its runs), ``work(run, settings, device)`` (one run's metrics) and ``section(results,
plot_dir)`` (its part of the results page); :mod:`.runner` runs them resumably, :mod:`.page` writes
the page, :mod:`.cli` is the command.
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: experiment name on the command line -> module
EXPERIMENTS = {
    "recall": "mcrnn.eval.experiments.recall",
    "niah": "mcrnn.eval.experiments.niah",
    "lm": "mcrnn.eval.experiments.lm",
    "post-training": "mcrnn.eval.experiments.post_training",
    "ordering": "mcrnn.eval.experiments.ordering",
    "retrofit": "mcrnn.eval.experiments.retrofit",
}


def experiment_module(name: str) -> ModuleType:
    """The module of experiment ``name``."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)} or report")
    return importlib.import_module(EXPERIMENTS[name])
