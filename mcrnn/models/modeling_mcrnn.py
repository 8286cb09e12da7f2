"""``MCModel`` and ``MCForCausalLM``: Hugging Face models built from MC (or attention) token mixers.

Data flow (DESIGN.md §9): ``ids -> embedding -> L x block -> RMSNorm -> LM head -> logits``, where a block is
``h = h + mixer(RMSNorm(h)); h = h + SwiGLU(RMSNorm(h))``, ``SwiGLU(x) = W_down (silu(W_gate x) * W_up x)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from mcrnn.layers.attention import Attention
from mcrnn.layers.checks import check_attention_mask
from mcrnn.layers.mc_attention import MemoryCachingAttention
from mcrnn.models.cache import MCCache
from mcrnn.models.configuration_mcrnn import MCConfig

#: the cache's name in model outputs and generation kwargs: ``cache`` in transformers 5,
#: ``past_key_values`` before
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class SwiGLU(nn.Module):
    """``W_down (silu(W_gate x) * W_up x)``, no biases; ``x`` [..., hidden] -> [..., hidden]."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def build_mixer(config: MCConfig, layer_idx: int) -> nn.Module:
    """The token mixer of layer ``layer_idx``: an MC layer (MC off when no segmentation) or attention."""
    if config.mixer_of(layer_idx) == "attention":
        return Attention(
            config.hidden_size,
            config.num_heads,
            rope_theta=config.rope_theta,
            conv_size=config.attention_conv_size,
            layer_idx=layer_idx,
        )
    return MemoryCachingAttention.from_config(config, layer_idx)


class MCBlock(GradientCheckpointingLayer):
    """``h + mixer(norm(h))`` then ``h + mlp(norm(h))``; recomputed in the backward pass after
    ``model.gradient_checkpointing_enable()`` (training only, without a cache)."""

    def __init__(self, config: MCConfig, layer_idx: int) -> None:
        super().__init__()
        self.mixer_norm = nn.RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.mixer = build_mixer(config, layer_idx)
        self.mlp_norm = nn.RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)

    def forward(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        cache: object | None = None,
        use_cache: bool = False,
        cu_seqlens: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, object | None]:
        mixed, new_cache = self.mixer(
            self.mixer_norm(hidden),
            attention_mask=attention_mask,
            cache=cache,
            use_cache=use_cache,
            cu_seqlens=cu_seqlens,
        )
        hidden = hidden + mixed
        hidden = hidden + self.mlp(self.mlp_norm(hidden))
        return hidden, new_cache


class MCPreTrainedModel(PreTrainedModel):
    """Weight init and Hugging Face plumbing shared by :class:`MCModel` and :class:`MCForCausalLM`."""

    config_class = MCConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["MCBlock"]

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        """Generation must not build a KV ``DynamicCache``: the model returns its own :class:`MCCache`."""
        return False

    def _initialize_weights(self, module: nn.Module, is_custom_code: bool = False) -> None:
        """As Hugging Face's, but an MC layer, which holds no parameter of its own, is initialised too (a
        custom-code model's parameterless modules are otherwise skipped). Parameters ``from_pretrained``
        loaded under it keep their loaded values: its reset writes part of a deep memory's
        ``rate_proj.bias`` in place, which Hugging Face's guard on the ``torch.nn.init`` functions cannot
        see, so loaded values are put back after the reset (and a fully loaded layer is not reset)."""
        if isinstance(module, MemoryCachingAttention) and not getattr(module, "_is_hf_initialized", False):
            params = dict(module.named_parameters())
            loaded = [name for name, p in params.items() if getattr(p, "_is_hf_initialized", False)]
            if len(loaded) < len(params):
                loaded_values = {name: params[name].detach().clone() for name in loaded}
                self._init_weights(module)
                with torch.no_grad():
                    for name, value in loaded_values.items():
                        params[name].copy_(value)
            module._is_hf_initialized = True
            return
        super()._initialize_weights(module, is_custom_code)

    def _init_weights(self, module: nn.Module) -> None:
        """Normal(0, ``initializer_range``) for linear and embedding weights, ones for RMSNorm; an MC layer
        keeps its own init (:meth:`MemoryCachingAttention.reset_parameters`: gates, decays and deep-memory
        weights have their own ranges). Modules are visited children first, so the MC layer's reset comes
        after, and overrides, the generic init of its children. Parameters loaded by ``from_pretrained``
        are never re-initialised (Hugging Face guards the ``torch.nn.init`` functions)."""
        std = self.config.initializer_range
        if isinstance(module, MemoryCachingAttention):
            module.reset_parameters()
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.RMSNorm) and module.weight is not None:
            nn.init.ones_(module.weight)


class MCModel(MCPreTrainedModel):
    """Embedding, blocks and the final norm; returns hidden states [B, T, hidden] and the cache."""

    def __init__(self, config: MCConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(MCBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: MCCache | None = None,
        use_cache: bool | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cu_seqlens: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """``input_ids`` [B, T] (or ``inputs_embeds`` [B, T, hidden]); ``attention_mask`` [B, T_total] with
        1 = real token and padding on the right only; ``cache`` continues a previous call and is updated
        in place (``past_key_values`` is accepted as its transformers-4 name). ``output_hidden_states``:
        also return the embeddings, each block's output and the final normed state (``L + 1`` tensors,
        the last one normed, as Hugging Face models do). Other keywords are rejected, but for the
        position arguments ``generate`` passes (positions are implicit in the recurrent state).
        ``cu_seqlens`` [N + 1]: documents packed back to back in a [1, T] batch (flash-linear-attention's
        convention); no state, context, segment or attention crosses a boundary (training: no cache)."""
        cache = _pop_generation_kwargs(kwargs, cache, type(self).__name__)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if input_ids is not None:
            _check_input_ids(input_ids, self.config.vocab_size)
        hidden = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if use_cache is None:  # no cache while training (or over packed documents) unless asked for
            use_cache = self.config.use_cache and not self.training and cu_seqlens is None
        use_cache = use_cache or cache is not None
        if attention_mask is not None:
            past = 0 if cache is None else cache.get_seq_length()
            check_attention_mask(attention_mask, *hidden.shape[:2], past)
            attention_mask = attention_mask[:, -hidden.shape[1] :]
            if not torch.compiler.is_compiling() and bool(attention_mask.all()):
                attention_mask = None
        if use_cache and cache is None:
            cache = MCCache(len(self.layers))
        all_hidden = []
        for idx, layer in enumerate(self.layers):
            all_hidden.append(hidden)
            layer_cache = cache.layers[idx] if cache is not None else None
            hidden, layer_cache = layer(
                hidden,
                attention_mask=attention_mask,
                cache=layer_cache,
                use_cache=use_cache,
                cu_seqlens=cu_seqlens,
            )
            if cache is not None:
                cache.layers[idx] = layer_cache
        if cache is not None:
            cache.seen_tokens += hidden.shape[1]
        hidden = self.norm(hidden)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden,
            hidden_states=(*all_hidden, hidden) if output_hidden_states else None,
            **{CACHE_FIELD: cache if use_cache else None},
        )


class MCForCausalLM(MCPreTrainedModel, GenerationMixin):
    """:class:`MCModel` plus a linear LM head (tied to the embedding when ``tie_word_embeddings``).

    ``labels`` follow the Hugging Face convention: the same ids as ``input_ids`` (-100 = ignored),
    shifted inside so that position ``t`` predicts ``labels[t + 1]``; with packed documents
    (``cu_seqlens``) the first token of every document but the first is not predicted from the
    previous document.
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: MCConfig) -> None:
        super().__init__(config)
        self.model = MCModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: MCCache | None = None,
        use_cache: bool | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int = 0,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cu_seqlens: torch.Tensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits [B, T, vocab] (the last ``logits_to_keep`` positions when > 0), loss, cache and (with
        ``output_hidden_states``) the hidden states; other keywords as :meth:`MCModel.forward`."""
        cache = _pop_generation_kwargs(kwargs, cache, type(self).__name__)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            cache=cache,
            use_cache=use_cache,
            inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states,
            cu_seqlens=cu_seqlens,
        )
        hidden = outputs.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None and cu_seqlens is not None and cu_seqlens.numel() > 2:
            labels = labels.index_fill(1, cu_seqlens[1:-1].to(labels.device), -100)
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(),
                labels[:, 1:].flatten().to(logits.device),
                ignore_index=-100,
            )
        new_cache = getattr(outputs, CACHE_FIELD)
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, **{CACHE_FIELD: new_cache}
        )


def _check_input_ids(input_ids: torch.Tensor, vocab_size: int) -> None:
    """``ValueError`` unless ``input_ids`` is [B, T] (B, T >= 1) with every id in ``[0, vocab_size)``.

    The range check reads the ids on the host (one sync); inside ``torch.compile`` it is skipped, so a
    compiled forward has no graph break (an id out of range then fails in the embedding lookup)."""
    if input_ids.dim() != 2 or 0 in input_ids.shape:
        raise ValueError(f"input_ids must be [B, T] with B, T >= 1, got shape {tuple(input_ids.shape)}")
    if torch.compiler.is_compiling():
        return
    low, high = (int(x) for x in torch.stack([input_ids.min(), input_ids.max()]).tolist())
    if low < 0 or high >= vocab_size:
        raise ValueError(f"input_ids must lie in [0, vocab_size={vocab_size}), got range [{low}, {high}]")


#: keywords ``generate`` may pass that a recurrent model does not need (positions are implicit)
IGNORED_GENERATION_KWARGS = ("cache_position", "position_ids")


def _pop_generation_kwargs(kwargs: dict, cache: MCCache | None, owner: str) -> MCCache | None:
    """The cache (``past_key_values`` is its transformers-4 name); raise ``TypeError`` on any keyword
    that is neither a generation position argument nor ``output_attentions``, which is accepted and gives
    ``attentions=None``, as recurrent models of transformers do (the mixers return no attention weights)."""
    past = kwargs.pop("past_key_values", None)
    cache = past if cache is None else cache
    for name in IGNORED_GENERATION_KWARGS:
        kwargs.pop(name, None)
    kwargs.pop("output_attentions", None)  # no attention weights: outputs carry attentions=None
    if kwargs:
        raise TypeError(f"{owner}.forward() got unexpected keyword arguments {sorted(kwargs)}")
    return cache
