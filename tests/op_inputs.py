"""Tests build ``memory_caching``'s inputs as one flat dict (q, k, v, u, the family's tensors, options),
which is easy to slice in time or batch; :func:`grouped` turns it into the call's keywords, the family's
tensors grouped into ``memory=<dataclass>`` (:func:`mcrnn.ops.memories.memory_inputs`). Imported by test
modules (``tests/`` is on ``sys.path``, as for ``mc_reference``)."""

from __future__ import annotations

from mcrnn.ops import memory_caching
from mcrnn.ops.memories import INPUT_NAMES, memory_inputs

#: every family input name (``log_decay``, ``beta``, ``params``, ``momentum``, ``mask``, ...)
FAMILY_INPUTS = frozenset(name for names in INPUT_NAMES.values() for name in names)


def grouped(call: dict) -> dict:
    """``call`` with its family tensors (None ones dropped) moved into ``memory=memory_inputs(memory, ...)``
    (``memory`` a name, default ``linear``); a ``memory`` that is already a dataclass is left as it is."""
    memory = call.get("memory", "linear")
    if not isinstance(memory, str):
        return dict(call)
    rest = {name: x for name, x in call.items() if name not in FAMILY_INPUTS}
    tensors = {name: x for name, x in call.items() if name in FAMILY_INPUTS}
    return {**rest, "memory": memory_inputs(memory, **tensors)}


def mc_flat(*qkvu: object, **call: object) -> object:
    """``memory_caching`` with the family's tensors given flat, as keywords beside the options."""
    return memory_caching(*qkvu, **grouped(call))
