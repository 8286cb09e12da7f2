"""Retrofitted folders: saved with the MC settings in ``config.json`` and a model class that applies them.

``save_retrofitted(model, out)`` writes ``save_pretrained``'s files plus ``modeling_mcrnn_retrofit.py``,
which defines ``<Host>WithMemoryCaching = with_memory_caching(<Host>)``, and points
``config.json``'s ``auto_map["AutoModelForCausalLM"]`` at it. The MC settings are
``config.json["mcrnn_memory_caching"]`` (the keywords of :func:`add_memory_caching`). So
``AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)`` (lm-evaluation-harness's ``hf``
model with ``trust_remote_code=True``) builds the host model and switches MC on before the weights
(router weights included) are loaded; ``mcrnn`` must be installed where it loads.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from torch import nn

from mcrnn.retrofit.api import CONFIG_KEY, MCRNN_CONFIG, add_memory_caching
from mcrnn.retrofit.patch import reinstate

MODULE = "modeling_mcrnn_retrofit"
SOURCE = '''"""{host} with Memory Caching: written by `mcrnn retrofit` (needs the mcrnn package installed)."""

from {module} import {host}

from mcrnn.retrofit.hub import with_memory_caching

{name} = with_memory_caching({host})
'''


def with_memory_caching(host: type) -> type:
    """A subclass of the transformers model class ``host`` that applies ``config.mcrnn_memory_caching``
    at construction (so ``from_pretrained`` loads router weights into it) and makes sure it is still
    on when ``from_pretrained`` returns."""

    class WithMemoryCaching(host):  # type: ignore[misc, valid-type]
        def __init__(self, config, *args, **kwargs) -> None:  # noqa: ANN001, ANN002, ANN003
            super().__init__(config, *args, **kwargs)
            settings = getattr(config, CONFIG_KEY, None)
            if settings:
                add_memory_caching(self, **settings)

        @classmethod
        def is_custom_code(cls) -> bool:
            """The host's answer: the subclass writes no weight in place, and transformers initialises
            custom code's non-persistent buffers differently (e.g. Falcon-H1's ``mup_vector`` stays empty)."""
            return host.is_custom_code()

        @classmethod
        def from_pretrained(cls, *args, **kwargs):  # noqa: ANN002, ANN003, ANN206
            model = super().from_pretrained(*args, **kwargs)
            reinstate(model)  # after transformers' kernelize, which drops instance forwards
            return model

    WithMemoryCaching.__name__ = WithMemoryCaching.__qualname__ = f"{host.__name__}WithMemoryCaching"
    return WithMemoryCaching


def save_retrofitted(model: nn.Module, out: str | os.PathLike, tokenizer: object | None = None) -> Path:
    """Write ``model`` (with MC added) and its tokenizer to the folder ``out``, atomically: a temporary
    folder beside it is filled, then renamed (an existing ``out`` is replaced only then). An mcrnn
    model is saved as it is (its ``MCConfig`` carries the MC settings)."""
    mcrnn_model = MCRNN_CONFIG in model.__dict__
    if not mcrnn_model and not hasattr(model.config, CONFIG_KEY):
        raise ValueError("the model has no memory caching: call add_memory_caching(model, ...) first")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        if not mcrnn_model:
            add_model_code(staging, type(model))
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def add_model_code(folder: Path, model_class: type) -> None:
    """``modeling_mcrnn_retrofit.py`` and the ``auto_map`` entry of ``folder/config.json`` that loads it,
    for a model of ``model_class`` (a host class, or a ``<Host>WithMemoryCaching`` loaded from a folder);
    training checkpoints of a retrofitted model are written with it too."""
    host = model_class
    while host.__name__.endswith("WithMemoryCaching"):
        host = host.__mro__[1]
    name = f"{host.__name__}WithMemoryCaching"
    source = SOURCE.format(host=host.__name__, module=host.__module__, name=name)
    (folder / f"{MODULE}.py").write_text(source)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config["auto_map"] = {**config.get("auto_map", {}), "AutoModelForCausalLM": f"{MODULE}.{name}"}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
