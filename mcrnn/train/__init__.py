"""Training: the loop (:func:`train`), its options, checkpoints and YAML-driven runs."""

from mcrnn.train.checkpoint import latest_checkpoint, read_checkpoint, save_checkpoint
from mcrnn.train.config import build_dataset, load_config, run_config
from mcrnn.train.evaluate import evaluate_lm
from mcrnn.train.loop import TrainResult, lr_factor, train
from mcrnn.train.options import TrainOptions

__all__ = [
    "TrainOptions",
    "TrainResult",
    "build_dataset",
    "evaluate_lm",
    "latest_checkpoint",
    "load_config",
    "lr_factor",
    "read_checkpoint",
    "run_config",
    "save_checkpoint",
    "train",
]
