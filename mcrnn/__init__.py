"""mcrnn: Memory Caching for recurrent sequence models (Behrouz et al., 2026).

Importing the package registers the ``"mcrnn"`` model type with ``transformers``' Auto classes (at
once if ``transformers`` is imported, else when it is), without importing ``transformers`` itself:
``import mcrnn.ops`` stays light. ``mcrnn.MCConfig``, ``mcrnn.MCModel`` and ``mcrnn.MCForCausalLM``
load :mod:`mcrnn.models` on first access.
"""

from __future__ import annotations

from typing import Any

from mcrnn._registration import register_when_transformers_loads

__all__ = ["MCConfig", "MCForCausalLM", "MCModel"]

register_when_transformers_loads()


def __getattr__(name: str) -> Any:
    if name in __all__:
        import mcrnn.models

        return getattr(mcrnn.models, name)
    raise AttributeError(f"module 'mcrnn' has no attribute {name!r}")
