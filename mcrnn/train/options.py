"""``TrainOptions``: every knob of the training loop, with defaults and validation naming the field."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields

PRECISIONS = ("auto", "bf16", "fp32")
PARALLELS = ("ddp", "fsdp")
DEVICES = ("auto", "cpu", "cuda")
TRAINABLES = ("all", "router")


@dataclass
class TrainOptions:
    """Options of :func:`mcrnn.train.train`.

    Attributes:
        steps: optimizer steps.
        batch_size: global sequences per optimizer step (over all processes and micro-batches).
        micro_batch_size: sequences per forward pass and process; None = ``batch_size / world_size``
            (no accumulation). ``batch_size`` must be a multiple of ``micro_batch_size * world_size``.
        lr, min_lr_ratio, warmup_steps: linear warmup to ``lr`` over ``warmup_steps``, then cosine
            decay to ``lr * min_lr_ratio`` at ``steps``.
        weight_decay, betas, eps: AdamW (decay on matrices only, not on norms/biases/gates).
        grad_clip: max global gradient norm (0 disables clipping).
        eval_every: evaluate every N steps (0: only at the end); eval_batches: batches per evaluation
            (None: the whole eval set).
        save_every: checkpoint every N steps (0: only at the end; needs ``out_dir``); keep_checkpoints:
            how many complete checkpoints to keep.
        log_every: metrics line every N steps.
        seed: seeds data order and RNGs.
        out_dir: folder for ``metrics.jsonl``, ``checkpoints/`` and TensorBoard logs (None: nothing
            written).
        precision: ``bf16`` autocast, ``fp32``, or ``auto`` (bf16 on CUDA, fp32 on CPU).
        parallel: ``ddp`` or ``fsdp`` (FSDP2 ``fully_shard``) when run under torchrun.
        device: ``auto`` (CUDA if available), ``cpu`` or ``cuda``.
        progress: show a tqdm bar (rank 0 only).
        activation_checkpointing: recompute every block's activations in the backward instead of keeping
            them (``model.activation_checkpointing_enable()``, non-reentrant, so it composes with FSDP2):
            activation memory drops to about one block input per block, for about one more forward pass.
        compile: run the training forward under ``torch.compile`` (the model as given is compiled once;
            checkpoints hold the uncompiled module's state dict, so they load into an uncompiled model;
            evaluation runs uncompiled). compile_backend: ``torch.compile``'s ``backend``
            (``inductor``; ``aot_eager`` compiles faster and generates no code, for tests).
        trainable: ``all`` parameters, or only the learned ``router`` of a retrofit (``W_u`` and
            ``gamma`` of every layer; :func:`mcrnn.retrofit.freeze_backbone` before the optimizer is
            built, so the backbone stays bit-identical and the optimizer holds the router alone).
    """

    steps: int = 1000
    batch_size: int = 32
    micro_batch_size: int | None = None
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0
    eval_every: int = 0
    eval_batches: int | None = None
    save_every: int = 0
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    out_dir: str | None = None
    precision: str = "auto"
    parallel: str = "ddp"
    device: str = "auto"
    progress: bool = True
    activation_checkpointing: bool = False
    compile: bool = False
    compile_backend: str = "inductor"
    trainable: str = "all"

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "keep_checkpoints", "log_every"):
            _int_at_least(name, getattr(self, name), 1)
        for name in ("warmup_steps", "eval_every", "save_every", "seed"):
            _int_at_least(name, getattr(self, name), 0)
        if self.micro_batch_size is not None:
            _int_at_least("micro_batch_size", self.micro_batch_size, 1)
        if self.eval_batches is not None:
            _int_at_least("eval_batches", self.eval_batches, 1)
        for name in ("lr", "min_lr_ratio", "eps", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        for name in ("weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        self.betas = tuple(float(b) for b in self.betas)
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not isinstance(self.compile_backend, str) or not self.compile_backend:
            raise ValueError(
                f"compile_backend must be a torch.compile backend name, got {self.compile_backend!r}"
            )
        for name in ("progress", "activation_checkpointing", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        choices = (
            ("precision", PRECISIONS),
            ("parallel", PARALLELS),
            ("device", DEVICES),
            ("trainable", TRAINABLES),
        )
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, values: dict, section: str = "train") -> TrainOptions:
        """Build from a mapping; an unknown key is an error naming the closest valid one."""
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                raise unknown_key_error(section, key, known)
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)


def unknown_key_error(section: str, key: object, known: Iterable[str]) -> ValueError:
    """``<section>: unknown key 'x'; did you mean 'y'?`` with the closest valid key (difflib); without
    a close one, the valid keys when there are few, else their number."""
    known = sorted(known)
    close = difflib.get_close_matches(str(key), known, n=1)
    if close:
        hint = f"did you mean {close[0]!r}?"
    elif len(known) <= 8:
        hint = f"valid keys: {', '.join(known)}"
    else:
        hint = f"no valid key is close to it (there are {len(known)})"
    return ValueError(f"{section}: unknown key {key!r}; {hint}")


def _int_at_least(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
