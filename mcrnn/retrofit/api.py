"""``add_memory_caching`` / ``remove_memory_caching``: MC on the recurrent layers of an existing model."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from mcrnn.layers.mc_attention import MemoryCachingAttention
from mcrnn.models import MCConfig
from mcrnn.ops import MCSpec
from mcrnn.ops.spec import check_choice, check_memory
from mcrnn.retrofit.families import Family, family_of
from mcrnn.retrofit.patch import (
    ATTRIBUTE,
    install,
    install_mcrnn,
    keep_through_mode_switches,
    release_mode_switches,
    uninstall,
)
from mcrnn.retrofit.router import LearnedRouter

#: the key of the MC settings in ``config.json`` (the keywords of :func:`add_memory_caching`)
CONFIG_KEY = "mcrnn_memory_caching"
#: where an mcrnn model keeps its config fields from before the retrofit
MCRNN_CONFIG = "_mcrnn_retrofit_config"
ROUTERS = ("query", "learned")
SUPPORTED = (
    "gated DeltaNet (qwen3_5, qwen3_5_moe, qwen3_next, olmo_hybrid), Mamba2 mixers (mamba2, bamba, "
    "falcon_h1, nemotron_h, granitemoehybrid, zamba2), KDA (kimi_linear), mcrnn MemoryCachingAttention"
)


def add_memory_caching(
    model: nn.Module,
    *,
    segment_size: int | None = None,
    segmentation: str | None = None,
    aggregation: str = "average",
    init: str = "checkpoint",
    top_k: int | None = None,
    router: str = "query",
    layers: Sequence[int] | None = None,
) -> nn.Module:
    """Replace the read of every supported recurrent layer of ``model`` by Memory Caching (in place).

    The host layer computes its projections, convolution, gates and norms as before; its recurrence
    output becomes ``mcrnn.ops.memory_caching`` over the layer's own q, k, v and gates
    (:mod:`mcrnn.retrofit.families`), with the segments of ``segment_size`` tokens (or
    ``segmentation="log"``), ``aggregation`` (``average`` needs no router), ``init`` and ``top_k``
    (``ssc``) of :class:`~mcrnn.ops.MCSpec`. The state update is untouched.

    Args:
        router: ``query``: ``u_t = q_t``, the query the host reads with (after its L2 norm and
            ``1/sqrt(Dk)`` scale for the gated delta rule; ``C_t`` for Mamba2); ``learned``: per-layer
            ``u_t = x_t W_u`` and a gate ``gamma``, both zero at init, so the model is unchanged at init
            (:mod:`mcrnn.retrofit.router`; train them with :func:`freeze_backbone`). Not for mcrnn models.
        layers: the layer indices (the host's ``layer_idx``) to change; None: every supported layer.

    Returns: ``model``, its ``config.mcrnn_memory_caching`` set to these keywords (saved with it); an
    mcrnn model gets its own ``MCConfig`` fields instead (``aggregation``, ``segment_size``, ...,
    ``separate_router=False`` for ``router="query"``), so its saved folder is a plain MC model.
    """
    settings = {
        "segment_size": segment_size,
        "segmentation": segmentation,
        "aggregation": aggregation,
        "init": init,
        "top_k": top_k,
        "router": router,
        "layers": None if layers is None else list(layers),
    }
    spec = check_settings(settings)
    if any(ATTRIBUTE in module.__dict__ for module in model.modules()):
        raise ValueError("the model already has memory caching: call remove_memory_caching(model) first")
    found = supported_layers(model)
    if not found:
        raise ValueError(
            f"{type(model).__name__} has no recurrent layer memory caching supports (its layers hold "
            f"{', '.join(layer_classes(model)) or 'no blocks'}); supported: {SUPPORTED}"
        )
    if layers is not None:
        unknown = sorted(set(layers) - set(found))
        if unknown:
            raise ValueError(f"layers {unknown} are no supported recurrent layers; those are {sorted(found)}")
    chosen = {index: found[index] for index in (found if layers is None else layers)}
    mcrnn_model = any(family is None for _, family in chosen.values())
    for module, family in chosen.values():
        check_memory(spec, family.memory if family is not None else module.memory)
    if mcrnn_model and router == "learned":
        raise ValueError("router='learned' is for transformers layers (mcrnn models learn a router)")
    if mcrnn_model and (layers is not None or not isinstance(getattr(model, "config", None), MCConfig)):
        raise ValueError("an mcrnn model takes MC on all its layers (layers=None), set through its MCConfig")
    for index, (module, family) in chosen.items():
        if family is None:
            install_mcrnn(module, spec, router)
        else:
            install(module, family, index, spec, router)
    if mcrnn_model:  # its own config fields say it: save_pretrained writes an MC model
        new_fields = mcrnn_fields(spec, router)
        model.__dict__[MCRNN_CONFIG] = {name: getattr(model.config, name) for name in new_fields}
        for name, value in new_fields.items():
            setattr(model.config, name, value)
    else:
        keep_through_mode_switches(model)
        if getattr(model, "config", None) is not None:
            setattr(model.config, CONFIG_KEY, settings)
    return model


def check_settings(settings: dict) -> MCSpec:
    """The spec of :func:`add_memory_caching`'s keywords (one-line errors naming the bad one)."""
    check_choice("router", settings["router"], ROUTERS)
    names = ("segment_size", "segmentation", "aggregation", "init", "top_k")
    return MCSpec.from_options(**{name: settings[name] for name in names})


def mcrnn_fields(spec: MCSpec, router: str) -> dict[str, object]:
    """The :class:`~mcrnn.models.MCConfig` fields of ``spec`` (``router="query"``: no router projection)."""
    fields = {
        "aggregation": spec.aggregation,
        "segment_size": spec.segment_size,
        "segment_lengths": spec.segment_lengths,
        "segmentation": spec.segmentation,
        "init": spec.init,
        "ssc_top_k": spec.top_k,
    }
    return {**fields, "separate_router": False} if router == "query" else fields


def remove_memory_caching(model: nn.Module) -> nn.Module:
    """Restore the original read of every layer :func:`add_memory_caching` changed (router weights are
    dropped); returns ``model``."""
    changed = [module for module in model.modules() if ATTRIBUTE in module.__dict__]
    if not changed:
        raise ValueError("the model has no memory caching to remove")
    for module in changed:
        uninstall(module)
    release_mode_switches(model)
    for name, value in model.__dict__.pop(MCRNN_CONFIG, {}).items():
        setattr(model.config, name, value)
    if getattr(model, "config", None) is not None and hasattr(model.config, CONFIG_KEY):
        delattr(model.config, CONFIG_KEY)
    return model


def supported_layers(model: nn.Module) -> dict[int, tuple[nn.Module, Family | None]]:
    """``{layer index: (module, family)}`` of the recurrent layers MC supports (family None: mcrnn's)."""
    found: dict[int, tuple[nn.Module, Family | None]] = {}
    for module in model.modules():
        family = None if isinstance(module, MemoryCachingAttention) else family_of(module)
        if family is None and not isinstance(module, MemoryCachingAttention):
            continue
        index = getattr(module, "layer_idx", None)
        found[len(found) if index is None or index in found else index] = (module, family)
    return found


def layer_classes(model: nn.Module) -> list[str]:
    """Class names of the modules inside the model's blocks (the entries of its ``ModuleList``s)."""
    names: dict[str, None] = {}
    for stack in (m for m in model.modules() if isinstance(m, nn.ModuleList)):
        for block in stack:
            for child in block.children():
                names[type(child).__name__] = None
    return list(names)


def router_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The learned routers' parameters (``W_u`` and ``gamma`` of every layer), for an optimizer."""
    return [p for module in model.modules() if isinstance(module, LearnedRouter) for p in module.parameters()]


def freeze_backbone(model: nn.Module) -> list[nn.Parameter]:
    """Make only the router parameters trainable; returns them (an error if there are none)."""
    routers = router_parameters(model)
    if not routers:
        raise ValueError("the model has no learned router: add_memory_caching(model, router='learned', ...)")
    keep = {id(p) for p in routers}
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in keep)
    return routers
