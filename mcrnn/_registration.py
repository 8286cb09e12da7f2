"""Register the ``"mcrnn"`` model type with ``transformers``' Auto classes without importing it.

``import mcrnn`` must register the Auto classes, but ``import mcrnn.ops`` (which runs
``mcrnn/__init__``) must stay light. So registration happens at once when ``transformers`` is already
imported, and otherwise right after it is first imported, by a finder on ``sys.meta_path`` that wraps
the loader of the ``transformers`` package.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from types import ModuleType


def register_auto_classes() -> None:
    """``AutoConfig``/``AutoModel``/``AutoModelForCausalLM`` learn ``MCConfig`` and its models."""
    import mcrnn.models  # noqa: F401  (registers on import)


class _RegisterAfterImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``transformers`` with the other finders and registers once its module has executed."""

    def __init__(self) -> None:
        self._loader: importlib.abc.Loader | None = None

    def find_spec(self, fullname: str, path: object, target: ModuleType | None = None):  # noqa: ANN201
        if fullname != "transformers":
            return None
        sys.meta_path.remove(self)
        spec = None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        if spec is None or spec.loader is None:
            return spec
        self._loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        register_auto_classes()


def register_when_transformers_loads() -> None:
    """Register now if ``transformers`` is imported, else as soon as it is."""
    if "transformers" in sys.modules:
        register_auto_classes()
    elif not any(isinstance(finder, _RegisterAfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())
