"""The per-instance patch that replaces a host layer's recurrent read by mcrnn's MC read.

The layer's class ``forward`` (undecorated) is rebuilt for this instance with its own code and a copy
of its module's globals in which the core recurrence function (:mod:`mcrnn.retrofit.families`) is
replaced by one that calls mcrnn's op on the same q, k, v and gates. Projections, convolution, gates,
norms and the output projection are the host's own code; the transformers module itself is never
changed, and :func:`uninstall` deletes the instance attribute, which restores the class's forward.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mcrnn.layers.mc_attention import MemoryCachingAttention
from mcrnn.ops import MCSpec
from mcrnn.ops.spec import check_memory
from mcrnn.retrofit.families import (
    GATED_DELTANET,
    KDA,
    READS,
    Family,
    delta_inputs,
    host_forward,
    ssd_inputs,
)
from mcrnn.retrofit.router import LearnedRouter
from mcrnn.retrofit.state import RowMemory, State, memory_store

ATTRIBUTE = "_mcrnn_retrofit"
ROUTER = "mc_router"


@dataclass
class Call:
    """What the current forward call of the layer was given: host cache, attention mask, input."""

    cache: Any
    mask: torch.Tensor | None
    x: torch.Tensor


@dataclass
class LayerRetrofit:
    """The MC settings of one host layer and the state of its current call."""

    family: Family
    layer_idx: int
    spec: MCSpec
    router: str
    call: Call | None = None
    #: the globals the patched forward runs with (the host module's, with the cores replaced)
    forward_globals: dict[str, Any] = field(default_factory=dict)
    #: the layer's instance forward (see :func:`reinstate`)
    forward: Callable | None = None

    def read(
        self, layer: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gates: dict
    ) -> torch.Tensor:
        """The MC read [B, T, H, Dv] of the prepared inputs, continuing the MC state on the host cache."""
        call = self.call
        u = q if self.router == "query" else getattr(layer, ROUTER).queries(call.x, q.dtype)
        store = memory_store(call.cache) if call.cache is not None else None
        state = store.get(self.layer_idx) if store is not None else None
        rows = None
        if state is None and call.mask is not None and tuple(call.mask.shape) == tuple(q.shape[:2]):
            rows = MemoryCachingAttention._check_mask(call.mask, *q.shape[:2])[1]
        if rows is None and not isinstance(state, RowMemory):
            out, new = READS[self.family.name](q, k, v, u, gates, self.spec, state, store is not None)
        else:
            out, new = self._read_rows(q, k, v, u, gates, state, rows, store is not None)
        if store is not None:
            store[self.layer_idx] = new
        return out

    def _read_rows(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        u: torch.Tensor | None,
        gates: dict,
        state: State | None,
        rows: list[torch.Tensor] | None,
        output_cache: bool,
    ) -> tuple[torch.Tensor, RowMemory | None]:
        """Each row on its own real tokens with its own MC state (left padding; 0 at padded positions)."""
        batch, seq_len = q.shape[:2]
        caches = state.rows if isinstance(state, RowMemory) else [None] * batch
        every = torch.arange(seq_len, device=q.device)
        rows = rows if rows is not None else [every] * batch
        out = v.new_zeros(v.shape)
        new = []
        for b, index in enumerate(rows):
            if index.numel() == 0:
                new.append(caches[b])
                continue
            row_q, row_k, row_v = (t[b : b + 1, index] for t in (q, k, v))
            row_gates = {name: gate[b : b + 1, index] for name, gate in gates.items()}
            row_u = None if u is None else u[b : b + 1, index]
            read = READS[self.family.name]
            row_out, cache = read(row_q, row_k, row_v, row_u, row_gates, self.spec, caches[b], output_cache)
            out[b, index] = row_out[0]
            new.append(cache)
        return out, (RowMemory(new) if output_cache else None)


def _delta_core(layer: nn.Module, retrofit: LayerRetrofit, host_core: Callable) -> Callable:
    """Replacement of the host's ``torch_{chunk,recurrent}_gated_delta_rule`` (or KDA's
    ``{chunk,recurrent}_kimi_delta_attention``, same signature) for ``layer``."""

    def core(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        g: torch.Tensor,
        beta: torch.Tensor,
        initial_state: torch.Tensor | None = None,
        output_final_state: bool = False,
        use_qk_l2norm_in_kernel: bool = False,
        cu_seqlens: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if cu_seqlens is not None:
            raise NotImplementedError("memory caching does not support packed sequences (cu_seqlens)")
        q, k, v, gates = delta_inputs(query, key, value, g, beta, use_qk_l2norm_in_kernel)
        out = retrofit.read(layer, q, k, v, gates)
        if retrofit.router == "learned":
            host_out, state = host_core(
                query,
                key,
                value,
                g=g,
                beta=beta,
                initial_state=initial_state,
                output_final_state=output_final_state,
                use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
                **kwargs,
            )
            return getattr(layer, ROUTER).blend(host_out, out), state
        if not output_final_state:
            return out.to(query.dtype), None
        batch, _, heads, key_dim = q.shape
        if initial_state is None:
            initial_state = v.new_zeros(batch, heads, key_dim, v.shape[-1])
        state = initial_state
        return out.to(query.dtype), state

    return core


def _ssd_core(layer: nn.Module, retrofit: LayerRetrofit, host_core: Callable) -> Callable:
    """Replacement of the host's ``mamba2_scan_forward`` for ``layer``: the read plus the D skip."""

    def core(
        module: nn.Module,
        hidden_states: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        dt: torch.Tensor,
        cache: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        batch, seq_len, _ = hidden_states.shape
        q, k, v, gates = ssd_inputs(module, hidden_states, B, C, dt)
        out = retrofit.read(layer, q, k, v, gates) + module.D.to(v.dtype)[:, None] * v
        if retrofit.router == "learned":
            host_out = host_core(module, hidden_states, B, C, dt, cache, **kwargs)
            out = getattr(layer, ROUTER).blend(host_out.view(out.shape), out)
        return out.reshape(batch, seq_len, -1)

    return core


def _declined(*args: Any, **kwargs: Any) -> None:
    """A fused kernel the host may try first: declining sends it down its core-function path."""
    return None


def router_shape(layer: nn.Module, family: Family) -> tuple[int, int, int]:
    """``(hidden, heads, key_dim)`` of the layer's MC read (value heads for the gated delta rule)."""
    if family is GATED_DELTANET:
        return layer.hidden_size, layer.num_v_heads, layer.head_k_dim
    if family is KDA:
        return layer.hidden_size, layer.num_heads, layer.head_dim
    return layer.hidden_size, layer.num_heads, layer.ssm_state_size


def install(layer: nn.Module, family: Family, layer_idx: int, spec: MCSpec, router: str) -> None:
    """Give ``layer`` the MC read (an instance ``forward``; a ``mc_router`` child for ``learned``)."""
    raw = host_forward(layer)
    retrofit = LayerRetrofit(family, layer_idx, spec, router)
    make = _ssd_core if family.name == "mamba2" else _delta_core
    replaced = {name: make(layer, retrofit, raw.__globals__[name]) for name in family.cores}
    replaced.update(dict.fromkeys(family.fused, _declined))
    retrofit.forward_globals = {**raw.__globals__, **replaced}
    patched = types.FunctionType(
        raw.__code__, retrofit.forward_globals, raw.__name__, raw.__defaults__, raw.__closure__
    )
    patched.__kwdefaults__ = raw.__kwdefaults__
    signature = inspect.signature(raw)
    input_name = list(signature.parameters)[1]  # after self: the layer's input hidden states

    def forward(*args: Any, **kwargs: Any) -> Any:
        if "cache_params" in kwargs:  # the hosts' deprecated name
            kwargs["cache"] = kwargs.pop("cache_params")
        arguments = signature.bind(layer, *args, **kwargs).arguments
        retrofit.call = Call(arguments.get("cache"), arguments.get("attention_mask"), arguments[input_name])
        try:
            return patched(layer, *args, **kwargs)
        finally:
            retrofit.call = None

    if router == "learned":
        reference = next(layer.parameters())
        router_module = LearnedRouter(*router_shape(layer, family)).to(reference.device, reference.dtype)
        layer.add_module(ROUTER, router_module)
    retrofit.forward = forward
    layer.forward = forward
    setattr(layer, ATTRIBUTE, retrofit)


def reinstate(model: nn.Module) -> None:
    """Put back instance forwards that were dropped: transformers' ``from_pretrained`` runs the
    ``kernels`` package's ``kernelize`` when it is installed, which pops every instance ``forward`` of a
    layer class it knows (e.g. ``Qwen3_5GatedDeltaNet``)."""
    for module in model.modules():
        retrofit = module.__dict__.get(ATTRIBUTE)
        if isinstance(retrofit, LayerRetrofit) and "forward" not in module.__dict__:
            module.forward = retrofit.forward


def keep_through_mode_switches(model: nn.Module) -> None:
    """transformers' ``train(mode)`` (and so ``eval()``) re-runs ``kernelize`` on a mode change when the
    ``kernels`` package is installed, dropping the MC forwards (training would then run the host's
    read, and the learned router would get no gradient): give ``model`` a ``train`` that reinstates them
    after every switch (removed by :func:`release_mode_switches`)."""
    host_train = type(model).train

    def train(mode: bool = True) -> nn.Module:
        result = host_train(model, mode)
        reinstate(model)
        return result

    model.train = train


def release_mode_switches(model: nn.Module) -> None:
    """Undo :func:`keep_through_mode_switches`."""
    model.__dict__.pop("train", None)


def install_mcrnn(layer: MemoryCachingAttention, spec: MCSpec, router: str) -> None:
    """An mcrnn MC layer: its spec is set (and, for ``router="query"``, its router projection set aside)."""
    previous = {"spec": layer.spec, "chunk_size": layer.chunk_size, "u_proj": layer.u_proj}
    layer.chunk_size = check_memory(spec, layer.memory, layer.chunk_size if layer.deep is not None else None)
    layer.spec = spec
    if router == "query":
        layer.u_proj = None
    setattr(layer, ATTRIBUTE, previous)


def uninstall(layer: nn.Module) -> None:
    """Restore the host's read (and, for an mcrnn layer, its spec and router)."""
    retrofit = layer.__dict__.pop(ATTRIBUTE)
    if isinstance(layer, MemoryCachingAttention):
        layer.spec, layer.chunk_size = retrofit["spec"], retrofit["chunk_size"]
        layer.u_proj = retrofit["u_proj"]
        return
    del layer.forward
    if ROUTER in layer._modules:
        del layer._modules[ROUTER]
