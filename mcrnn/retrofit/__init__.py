"""Memory Caching for models that already exist: Hugging Face hybrid/recurrent models and mcrnn's own.

``add_memory_caching(model, segment_size=256, aggregation="grm")`` replaces the read of every supported
recurrent layer (gated DeltaNet, Mamba2 SSD, mcrnn's MC layer) by mcrnn's MC read over the layer's own
q, k, v and gates; ``remove_memory_caching(model)`` restores it. A level above :mod:`mcrnn.models`:
it imports ops, layers and models; only the command line, evaluation and benchmarks import it.
See docs/retrofit.md.
"""

from mcrnn.retrofit.api import (
    CONFIG_KEY,
    add_memory_caching,
    freeze_backbone,
    remove_memory_caching,
    router_parameters,
    supported_layers,
)

__all__ = [
    "CONFIG_KEY",
    "add_memory_caching",
    "freeze_backbone",
    "remove_memory_caching",
    "router_parameters",
    "supported_layers",
]
