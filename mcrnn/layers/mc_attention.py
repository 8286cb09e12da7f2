"""``MemoryCachingAttention``: the MC token-mixing layer, [B, T, hidden] -> [B, T, hidden].

    q, k, v, u = proj(x);  q, k, v = silu(causal_conv_4(q, k, v));  q, k = q/|q|, k/|k|  (per head)
    log_decay = logsigmoid(x W_a) / 16                       (use_decay: linear, swla; always: gated_deltanet)
    log_decay = ChannelDecay(x)  [B, T, H, Dk]               (gla, kda: a decay per key channel, fla's gates)
    beta = sigmoid(x W_b)                                    (deltanet, gated_deltanet, kda: writing strength)
    o = memory_caching(q, k, v, u, ...)                      (mcrnn.ops)
    y = W_o [RMSNorm(o) * silu(x W_g)]

Without a segmentation (the default) caching is off: the layer is the base RNN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from mcrnn.layers.channel_decay import ChannelDecay
from mcrnn.layers.checks import check_hidden_states
from mcrnn.layers.conv import ShortConvolution
from mcrnn.layers.deep_memory import GATE_NORMALIZER, DeepMemory
from mcrnn.layers.norm import GatedRMSNorm
from mcrnn.layers.packing import run_documents
from mcrnn.ops import MCSpec, MemoryCache, memory_caching
from mcrnn.ops.api import check_cache
from mcrnn.ops.cache import batch_indices
from mcrnn.ops.memories import memory_inputs
from mcrnn.ops.spec import (
    CHANNEL_DECAY_MEMORIES,
    DEEP_MEMORIES,
    DELTA_MEMORIES,
    check_memory,
    check_positive_int,
)


@dataclass
class LayerCache:
    """Decoding state of one layer: ``op``, the cache of :func:`~mcrnn.ops.memory_caching` (a
    :class:`~mcrnn.ops.MemoryCache`), and ``conv``, the short-convolution buffers [B, K-1, C]."""

    op: MemoryCache
    conv: dict[str, torch.Tensor]

    def reorder(self, indices: torch.Tensor) -> LayerCache:
        """The cache of batch rows ``indices`` (beam search, batch selection)."""
        indices = batch_indices(indices)
        conv = {name: state.index_select(0, indices.to(state.device)) for name, state in self.conv.items()}
        return LayerCache(self.op.reorder(indices), conv)


@dataclass
class RowCaches:
    """Decoding state of a left-padded batch: one :class:`LayerCache` per row (rows at different
    stream positions, so each continues on its own)."""

    rows: list[LayerCache | None]

    def reorder(self, indices: torch.Tensor) -> RowCaches:
        """The caches of rows ``indices`` (beam search, batch selection)."""
        return RowCaches([self.rows[i] for i in batch_indices(indices).tolist()])


def check_layer_options(
    hidden_size: object,
    num_heads: object,
    head_dim: object,
    conv_size: object,
    memory_depth: object,
    memory_expansion: object,
) -> int:
    """Check the layer's sizes (the one place the layer and :class:`mcrnn.models.MCConfig` use);
    return the head dim (``hidden_size // num_heads`` when ``head_dim`` is None)."""
    check_positive_int("hidden_size", hidden_size)
    check_positive_int("num_heads", num_heads)
    check_positive_int("memory_depth", memory_depth)
    check_positive_int("memory_expansion", memory_expansion)
    if isinstance(conv_size, bool) or not isinstance(conv_size, int) or conv_size < 0:
        raise ValueError(f"conv_size must be an int >= 0 (0 disables the convolution), got {conv_size!r}")
    if head_dim is not None:
        check_positive_int("head_dim", head_dim)
        return head_dim
    if hidden_size % num_heads:
        raise ValueError(
            f"hidden_size={hidden_size} must be divisible by num_heads={num_heads} (or give head_dim)"
        )
    return hidden_size // num_heads


class MemoryCachingAttention(nn.Module):
    """Memory Caching token mixer (DESIGN.md §3-§6) with fla-style projections, conv and gated norm.

    Args:
        hidden_size: model width; num_heads: heads H (``head_dim = hidden_size // num_heads`` unless
            given).
        spec: the MC options as an :class:`~mcrnn.ops.MCSpec`, or its fields as keywords
            (``aggregation``, ``segment_size``, ``segment_lengths``, ``segmentation``, ``init``,
            ``top_k``, ``pooling``; see :func:`mcrnn.ops.memory_caching`), not both. No segmentation
            (the default): MC off, the layer is the base RNN.
        memory: ``linear``, ``swla``, a delta-rule memory ``deltanet``/``gated_deltanet`` (with a
            writing strength ``beta = sigmoid(x W_b)``; ``gated_deltanet`` always decays, ``deltanet``
            never, ``use_decay`` is unused), ``gla``/``kda`` (a decay per key channel,
            :class:`~mcrnn.layers.channel_decay.ChannelDecay`, always on; ``kda`` with ``beta`` as the delta
            rule; ``use_decay`` is unused), or a deep memory ``dla``/``titans`` (its weights and rates
            live in :class:`mcrnn.layers.deep_memory.DeepMemory`; ``use_decay`` is then unused).
        memory_expansion, memory_depth: hidden width ``E * head_dim`` and depth of a deep memory.
        use_decay: data-dependent decay ``a_t`` of ``linear``/``swla`` (else plain linear attention).
        conv_size: kernel of the short causal convolution on q, k, v (0 disables it).
        separate_router: a router projection ``u = x W_u`` (else ``u = q``, the paper's alternative).
        chunk_size: inner chunk (see :func:`mcrnn.ops.memory_caching`; None: the default).
        norm_eps: epsilon of the gated output RMSNorm.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        *,
        spec: MCSpec | None = None,
        memory: str = "linear",
        aggregation: str | None = None,
        segment_size: int | None = None,
        segment_lengths: Sequence[int] | None = None,
        segmentation: str | None = None,
        init: str | None = None,
        top_k: int | None = None,
        pooling: str | None = None,
        use_decay: bool = True,
        conv_size: int = 4,
        head_dim: int | None = None,
        separate_router: bool = True,
        chunk_size: int | None = None,
        norm_eps: float = 1e-5,
        layer_idx: int | None = None,
        memory_expansion: int = 4,
        memory_depth: int = 2,
    ) -> None:
        super().__init__()
        options = {
            "aggregation": aggregation,
            "segment_size": segment_size,
            "segment_lengths": segment_lengths,
            "segmentation": segmentation,
            "init": init,
            "top_k": top_k,
            "pooling": pooling,
        }
        given = sorted(name for name, value in options.items() if value is not None)
        if spec is not None and given:
            raise ValueError(f"pass spec or the MC keywords {given}, not both")
        self.spec = spec if spec is not None else MCSpec.from_options(**options)
        head_dim = check_layer_options(
            hidden_size, num_heads, head_dim, conv_size, memory_depth, memory_expansion
        )
        self.chunk_size = check_memory(self.spec, memory, chunk_size)
        self.hidden_size, self.num_heads, self.head_dim = hidden_size, num_heads, head_dim
        self.memory, self.layer_idx = memory, layer_idx
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(hidden_size, inner, bias=False)
        self.k_proj = nn.Linear(hidden_size, inner, bias=False)
        self.v_proj = nn.Linear(hidden_size, inner, bias=False)
        self.u_proj = nn.Linear(hidden_size, inner, bias=False) if separate_router else None
        self.convs = nn.ModuleDict(
            {name: ShortConvolution(inner, conv_size) for name in "qkv"} if conv_size > 0 else {}
        )
        self.deep = None
        if memory in DEEP_MEMORIES:
            self.deep = DeepMemory(
                hidden_size,
                num_heads,
                head_dim,
                memory=memory,
                expansion=memory_expansion,
                depth=memory_depth,
            )
        decays = memory == "gated_deltanet" or (use_decay and memory in ("linear", "swla"))
        self.decay_proj = nn.Linear(hidden_size, num_heads) if decays else None
        self.channel_decay = None
        if memory in CHANNEL_DECAY_MEMORIES:
            self.channel_decay = ChannelDecay(hidden_size, num_heads, head_dim, memory)
        writes_with_strength = memory in DELTA_MEMORIES or memory == "kda"
        self.beta_proj = nn.Linear(hidden_size, num_heads) if writes_with_strength else None
        self.swla_proj = nn.Linear(hidden_size, 2 * num_heads) if memory == "swla" else None
        self.gate_proj = nn.Linear(hidden_size, inner, bias=False)
        self.out_norm = GatedRMSNorm(head_dim, eps=norm_eps)
        self.o_proj = nn.Linear(inner, hidden_size, bias=False)

    @classmethod
    def from_config(cls, config: Any, layer_idx: int | None = None) -> MemoryCachingAttention:
        """The layer an :class:`mcrnn.models.MCConfig` describes (any object with its fields)."""
        return cls(
            config.hidden_size,
            config.num_heads,
            spec=config.mc_spec,
            memory=config.memory,
            use_decay=config.use_decay,
            conv_size=config.conv_size,
            head_dim=config.head_dim,
            separate_router=config.separate_router,
            chunk_size=config.chunk_size,
            layer_idx=layer_idx,
            memory_expansion=config.memory_expansion,
            memory_depth=config.memory_depth,
        )

    def reset_parameters(self) -> None:
        """The layer's own init: PyTorch's defaults for projections and the convolution, ones for the
        norm, and :meth:`DeepMemory.reset_parameters` for a deep memory."""
        for child in self.children():
            _reset(child)

    def forward(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        cache: LayerCache | RowCaches | None = None,
        use_cache: bool = False,
        cu_seqlens: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, LayerCache | RowCaches | None]:
        """Mix tokens of ``x`` [B, T, hidden].

        Args:
            attention_mask: [B, T] with 1 for tokens and 0 for padding. Right padding (1s then 0s)
                runs batched: pads write nothing into the memory (no write, decay or swla
                previous-token term; the conv buffer keeps each row's last real inputs). Any other mask
                (left padding, the convention of batched generation, or 0s inside a row) runs each row
                on its own real tokens, so segments count from the row's first real token; the cache
                is then a :class:`RowCaches` and later calls continue row by row. Either way the
                outputs of real tokens equal those of the rows without their masked tokens; outputs
                at masked tokens are 0 in the row-by-row case.
            cache: state after the previous tokens (decoding), checked by the op once per call (its type,
                memory and shapes; its spec is this layer's); use_cache: return the new state.
            cu_seqlens: [N + 1] boundaries of documents packed in ``x`` [1, T, hidden] (training; no
                mask or cache): no state, context or segment crosses a boundary
                (:mod:`mcrnn.layers.packing`).

        Returns: ``(y [B, T, hidden], cache or None)``.
        """
        check_hidden_states(x, self.hidden_size, self.q_proj.weight)
        if cu_seqlens is not None:
            if attention_mask is not None or cache is not None or use_cache:
                raise ValueError("cu_seqlens (packed documents) takes no attention_mask, cache or use_cache")
            forward = lambda docs, mask: self._forward_batch(docs, mask, None, False)[0]  # noqa: E731
            return run_documents(forward, x, cu_seqlens), None
        if cache is not None and not isinstance(cache, (LayerCache, RowCaches)):
            raise TypeError(f"cache must be the LayerCache this layer returned, got {type(cache).__name__}")
        batch, seq_len, _ = x.shape
        keep, tokens = self._check_mask(attention_mask, batch, seq_len)
        if tokens is not None or isinstance(cache, RowCaches):
            return self._forward_rows(x, tokens, cache, use_cache)
        if cache is not None:
            self._check_cache(cache, batch)
        return self._forward_batch(x, keep, cache, use_cache)

    def _check_cache(self, cache: LayerCache, batch: int) -> None:
        """The one check of a cache passed in (the op, called with ``check_inputs=False``, trusts it)."""
        check_cache(cache.op, self.spec, self.memory, (batch, self.num_heads, self.head_dim, self.head_dim))

    def _forward_rows(
        self,
        x: torch.Tensor,
        tokens: list[torch.Tensor] | None,
        cache: LayerCache | RowCaches | None,
        use_cache: bool,
    ) -> tuple[torch.Tensor, RowCaches | None]:
        """Each row on its own real tokens ``x[b, tokens[b]]`` (all when None) with its own cache."""
        batch, seq_len, _ = x.shape
        if cache is None:
            rows: list[LayerCache | None] = [None] * batch
        elif isinstance(cache, RowCaches):
            rows = list(cache.rows)
        else:
            rows = [cache.reorder(torch.tensor([b])) for b in range(cache.op.batch_size)]
        if len(rows) != batch:
            raise ValueError(f"cache holds {len(rows)} rows, x has B={batch}")
        every = torch.arange(seq_len, device=x.device)
        tokens = tokens if tokens is not None else [every] * batch
        y = x.new_zeros(x.shape)
        new_rows = []
        for b, index in enumerate(tokens):
            if index.numel() == 0:  # no token of this row in this call
                new_rows.append(rows[b])
                continue
            if rows[b] is not None:
                self._check_cache(rows[b], 1)
            out, row_cache = self._forward_batch(x[b : b + 1, index], None, rows[b], use_cache)
            y[b, index] = out[0]
            new_rows.append(row_cache)
        return y, (RowCaches(new_rows) if use_cache else None)

    def _forward_batch(
        self, x: torch.Tensor, keep: torch.Tensor | None, cache: LayerCache | None, use_cache: bool
    ) -> tuple[torch.Tensor, LayerCache | None]:
        """The batched forward; ``keep`` [B, T] a right-padding mask or None."""
        batch, seq_len, _ = x.shape
        lengths = None if keep is None else keep.sum(1)
        conv_state = {} if cache is None else cache.conv
        new_conv: dict[str, torch.Tensor] = {}
        streams = {"q": self.q_proj(x), "k": self.k_proj(x), "v": self.v_proj(x)}
        for name, conv in self.convs.items():
            streams[name], new_conv[name] = conv(streams[name], conv_state.get(name), lengths)
        heads = (batch, seq_len, self.num_heads, self.head_dim)
        q = nn.functional.normalize(streams["q"].view(heads), dim=-1)
        k = nn.functional.normalize(streams["k"].view(heads), dim=-1)
        v = streams["v"].view(heads)
        u = None if self.u_proj is None else self.u_proj(x).view(heads)
        log_decay = None
        if self.decay_proj is not None:
            log_decay = nn.functional.logsigmoid(_at_least_fp32(self.decay_proj(x))) / GATE_NORMALIZER
        if self.channel_decay is not None:
            log_decay = self.channel_decay(x)
        gates = {}
        if self.swla_proj is not None:
            prev_gate, cur_gate = torch.sigmoid(_at_least_fp32(self.swla_proj(x))).chunk(2, dim=-1)
            gates = {"prev_gate": prev_gate, "cur_gate": cur_gate}
        if self.beta_proj is not None:
            gates = {"beta": torch.sigmoid(_at_least_fp32(self.beta_proj(x)))}
        if keep is not None:  # pads write nothing, decay nothing (and, for swla, carry no previous token)
            keep = keep.to(k.dtype)
            k = k * keep[..., None, None]
            v = v * keep[..., None, None]
            if log_decay is not None:  # [B, T, H] or, per key channel, [B, T, H, Dk]
                log_decay = log_decay * keep.view(*keep.shape, *[1] * (log_decay.dim() - 2))
            gates = {name: gate * keep[..., None] for name, gate in gates.items()}
        gates = {"log_decay": log_decay, **gates}
        if self.deep is not None:
            v, gates = self.deep(x, v, keep)
        out = memory_caching(
            q,
            k,
            v,
            u,
            spec=self.spec,
            memory=memory_inputs(self.memory, **gates),
            chunk_size=self.chunk_size,
            cache=None if cache is None else cache.op,
            output_cache=use_cache,
            check_inputs=False,
        )
        memory_cache = None
        if use_cache:
            out, memory_cache = out
            if lengths is not None and self.memory == "swla":  # the previous token: each row's last real one
                rows, last = torch.arange(batch, device=x.device), lengths - 1
                memory_cache = replace(
                    memory_cache,
                    prev_key=k[rows, last].to(memory_cache.online.dtype),
                    prev_value=v[rows, last].to(memory_cache.online.dtype),
                )
        gate = self.gate_proj(x).view(heads)
        y = self.o_proj(self.out_norm(out, gate).reshape(batch, seq_len, -1))
        return y, (LayerCache(memory_cache, new_conv) if use_cache else None)

    @staticmethod
    def _check_mask(
        mask: torch.Tensor | None, batch: int, seq_len: int
    ) -> tuple[torch.Tensor | None, list[torch.Tensor] | None]:
        """``(keep, None)`` for right padding (``keep`` None when every token is real), or
        ``(None, tokens)`` with each row's real positions otherwise (left padding, or masked tokens
        inside a row, as ``generate`` infers them from pad ids)."""
        if mask is None:
            return None, None
        if tuple(mask.shape) != (batch, seq_len):
            raise ValueError(f"attention_mask must be [B, T]={batch, seq_len}, got {tuple(mask.shape)}")
        keep = mask.bool()
        if bool(keep.all()):
            return None, None
        if not bool((keep[:, 1:] & ~keep[:, :-1]).any()):
            return keep, None
        return None, [row.nonzero().flatten() for row in keep]


def _reset(module: nn.Module) -> None:
    """``module.reset_parameters()`` where it has one, else the same for its children."""
    if hasattr(module, "reset_parameters"):
        module.reset_parameters()
        return
    for child in module.children():
        _reset(child)


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Gates are computed in float32 from bf16/fp16 activations (float64 stays float64)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
