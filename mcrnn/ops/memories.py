"""The memory families of :func:`mcrnn.ops.memory_caching` and the per-token inputs each one takes.

One small frozen dataclass per family, named after it, holding exactly the tensors its write rule reads
(fla's names; every per-token tensor is [B, T, H], ``mask`` [B, T] bool):

- ``Linear(log_decay)``: ``M_t = a_t M_{t-1} + k_t v_t^T``, ``a_t = exp(log_decay_t)`` (None: no decay);
- ``SWLA(prev_gate, cur_gate, log_decay)``: ``M_t = a_t M_{t-1} + b_t k_{t-1} v_{t-1}^T + l_t k_t v_t^T``
  (``b = prev_gate``, ``l = cur_gate`` in [0, 1]);
- ``DeltaNet(beta)``: ``M_t = (I - b_t k_t k_t^T) M_{t-1} + b_t k_t v_t^T`` (writing strength ``b = beta``);
- ``GatedDeltaNet(log_decay, beta)``: ``M_t = a_t (I - b_t k_t k_t^T) M_{t-1} + b_t k_t v_t^T``;
- ``GLA(log_decay)``: ``M_t = Diag(a_t) M_{t-1} + k_t v_t^T``, ``a_t = exp(log_decay_t)`` [B, T, H, Dk]
  (gated linear attention: a decay per key channel);
- ``KDA(log_decay, beta)``: ``M_t = M'_t + b_t k_t (v_t - M'^T_t k_t)^T``, ``M'_t = Diag(a_t) M_{t-1}``
  (Kimi Delta Attention: the gated delta rule with a decay per key channel);
- ``DLA(params, eta, alpha, mask)``: ``theta_t = a_t theta_{t-1} - eta_t grad(-<f(k_t), v_t>)``;
- ``Titans(params, eta, alpha, momentum, mask)``: ``S_t = b_t S_{t-1} - eta_t grad ||f(k_t) - v_t||^2``,
  ``theta_t = a_t theta_{t-1} + S_t`` (``b = momentum``).

``memory="linear"`` (a string) is ``Linear()``; :func:`memory_inputs` turns a family name and keyword
tensors into its dataclass (the layer and the deprecated keywords of ``memory_caching`` use it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import ClassVar

import torch

from mcrnn.ops.spec import MEMORIES, check_choice


@dataclass(frozen=True, eq=False)
class MemoryInputs:
    """Base of the family dataclasses: ``name`` is the family's ``memory`` string."""

    name: ClassVar[str]

    def tensors(self) -> dict[str, object]:
        """The inputs by field name, None ones left out."""
        names = INPUT_NAMES[self.name]
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


@dataclass(frozen=True, eq=False)
class Linear(MemoryInputs):
    """``linear``: ``log_decay`` [B, T, H] finite, <= 0 (None: linear attention without decay)."""

    name: ClassVar[str] = "linear"
    log_decay: torch.Tensor | None = None


@dataclass(frozen=True, eq=False)
class SWLA(MemoryInputs):
    """``swla`` (sliding-window linear attention, window 2): the gates ``prev_gate`` (``b_t``) and
    ``cur_gate`` (``l_t``) in [0, 1] and an optional ``log_decay``, each [B, T, H]."""

    name: ClassVar[str] = "swla"
    prev_gate: torch.Tensor
    cur_gate: torch.Tensor
    log_decay: torch.Tensor | None = None


@dataclass(frozen=True, eq=False)
class DeltaNet(MemoryInputs):
    """``deltanet``: the writing strength ``beta`` [B, T, H] in [0, 1] (keys expected L2-normalised)."""

    name: ClassVar[str] = "deltanet"
    beta: torch.Tensor


@dataclass(frozen=True, eq=False)
class GatedDeltaNet(MemoryInputs):
    """``gated_deltanet``: ``log_decay`` [B, T, H] finite, <= 0, and the writing strength ``beta`` in
    [0, 1]."""

    name: ClassVar[str] = "gated_deltanet"
    log_decay: torch.Tensor
    beta: torch.Tensor


@dataclass(frozen=True, eq=False)
class GLA(MemoryInputs):
    """``gla``: ``log_decay`` [B, T, H, Dk] finite, <= 0, a decay per key channel (required)."""

    name: ClassVar[str] = "gla"
    log_decay: torch.Tensor


@dataclass(frozen=True, eq=False)
class KDA(MemoryInputs):
    """``kda``: ``log_decay`` [B, T, H, Dk] finite, <= 0, a decay per key channel, and the writing strength
    ``beta`` [B, T, H] in [0, 1] (keys expected L2-normalised)."""

    name: ClassVar[str] = "kda"
    log_decay: torch.Tensor
    beta: torch.Tensor


@dataclass(frozen=True, eq=False)
class DLA(MemoryInputs):
    """``dla`` (deep linear attention): the initial weights ``params`` (one [H, d_out, d_in] per layer, see
    :func:`mcrnn.ops.deep.layer_shapes`), step size ``eta >= 0`` and retention ``alpha`` in [0, 1], each
    [B, T, H]; ``mask`` [B, T] bool, the tokens that write (None: all)."""

    name: ClassVar[str] = "dla"
    params: Sequence[torch.Tensor]
    eta: torch.Tensor
    alpha: torch.Tensor
    mask: torch.Tensor | None = None


@dataclass(frozen=True, eq=False)
class Titans(MemoryInputs):
    """``titans`` (the Titans long-term memory): as :class:`DLA`, plus the ``momentum`` ``b_t`` [B, T, H] in
    [0, 1]."""

    name: ClassVar[str] = "titans"
    params: Sequence[torch.Tensor]
    eta: torch.Tensor
    alpha: torch.Tensor
    momentum: torch.Tensor
    mask: torch.Tensor | None = None


#: the dataclass of every family, by ``memory`` string
FAMILIES: dict[str, type[MemoryInputs]] = {
    cls.name: cls for cls in (Linear, SWLA, DeltaNet, GatedDeltaNet, GLA, KDA, DLA, Titans)
}
#: each family's inputs and the ones it cannot run without (formed once: ``torch.compile`` traces no
#: ``dataclasses.fields``)
INPUT_NAMES = {name: tuple(f.name for f in fields(cls)) for name, cls in FAMILIES.items()}
REQUIRED_NAMES = {
    name: tuple(f.name for f in fields(cls) if f.default is not None) for name, cls in FAMILIES.items()
}


def memory_inputs(memory: str, **inputs: object) -> MemoryInputs:
    """The family dataclass of ``memory`` holding ``inputs`` (None values dropped); a missing or foreign
    input is a ``ValueError`` naming it."""
    check_choice("memory", memory, MEMORIES)
    family = FAMILIES[memory]
    given = {name: value for name, value in inputs.items() if value is not None}
    accepted = INPUT_NAMES[memory]
    foreign = sorted(set(given) - set(accepted))
    if foreign:
        raise ValueError(f"memory={memory!r} takes {accepted}, not {foreign}")
    missing = [name for name in REQUIRED_NAMES[memory] if name not in given]
    if missing:
        raise ValueError(f"memory={memory!r} needs {missing}: pass memory={family.__name__}(...)")
    return family(**given)
