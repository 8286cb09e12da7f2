"""``MCConfig``: the Hugging Face configuration of an MC language model (``model_type = "mcrnn"``).

Every field has a default, and an invalid value fails here, at construction, with the field's name.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping, Sequence

from transformers import PretrainedConfig

from mcrnn.layers.attention import check_attention_options
from mcrnn.layers.mc_attention import check_layer_options
from mcrnn.ops import MCSpec
from mcrnn.ops.spec import check_choice, check_memory, check_positive_int

MIXERS = ("mc", "attention")


class MCConfig(PretrainedConfig):
    """Configuration of :class:`mcrnn.models.MCForCausalLM`.

    Architecture: ``embedding -> num_hidden_layers x [RMSNorm -> mixer -> RMSNorm -> SwiGLU MLP] ->
    RMSNorm -> LM head``. The mixer of layer ``l`` is ``layer_mixers[l]`` (all ``mixer`` when None):

    - ``"mc"``: :class:`mcrnn.layers.MemoryCachingAttention` (built by its ``from_config``) with every
      option below; without ``segment_size``, ``segment_lengths`` or ``segmentation="log"`` caching is
      off (the base RNN).
    - ``"attention"``: causal softmax attention with RoPE (``rope_theta``), the Transformer++ baseline.

    The MC options are checked by the same code as the layer's and the op's (:class:`MCSpec`,
    :func:`mcrnn.ops.spec.check_memory`, :func:`mcrnn.layers.mc_attention.check_layer_options`), so
    the three accept and reject the same option sets with the same messages.

    Args:
        vocab_size: number of token ids (the byte tokenizer needs 257).
        hidden_size: model width.
        num_hidden_layers: number of blocks.
        num_heads: heads of every mixer.
        head_dim: head dim of the MC layers (None: ``hidden_size // num_heads``).
        intermediate_size: SwiGLU width; None -> ``8/3 * hidden_size`` rounded up to a multiple of 32.
        mixer / layer_mixers: see above; ``layer_mixers`` has one entry per layer (a hybrid).
        memory: ``linear``, ``swla``, ``deltanet``, ``gated_deltanet``, ``gla``, ``kda`` (a decay per key
            channel), ``dla`` or ``titans``.
        aggregation: ``residual``, ``grm``, ``soup``, ``ssc`` or ``average``.
        segment_size: constant segment length C, or None.
        segment_lengths: explicit segment lengths (an alternative to ``segment_size``), or None.
        segmentation: ``constant`` (the segments above) or ``log`` (Fenwick buckets; with ``grm`` the
            paper's Log-Linear++).
        init: ``checkpoint`` or ``independent`` (DESIGN.md §4).
        ssc_top_k: cached memories read by ``ssc`` (required for it; the layer's ``top_k``, renamed so
            that it never collides with the sampling option ``top_k`` of ``generate``).
        pooling: router-context pooling, ``mean`` or ``sum``.
        use_decay: data-dependent decay of the linear and swla memories (gated_deltanet, gla and kda
            always decay).
        conv_size: short causal convolution width (0 disables it).
        separate_router: a router projection ``u = x W_u`` (else ``u = q``).
        chunk_size: inner chunk (None: the library's choice; for deep memories the inner mini-batch,
            which segments must be multiples of).
        memory_expansion, memory_depth: MLP expansion and depth of deep memories.
        rope_theta: RoPE base of attention layers.
        attention_conv_size: short causal convolution width on the q, k, v of attention layers (0, the
            default, is the plain Transformer++; the MC layers' ``conv_size`` gives every recurrent model
            one, and this gives attention the same previous-token features).
        norm_eps: RMSNorm epsilon of the blocks.
        initializer_range: std of the normal init of embeddings and linear layers outside MC layers.
        tie_word_embeddings: share the embedding and LM-head weights.
    """

    model_type = "mcrnn"
    keys_to_ignore_at_inference = ["cache"]

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 256,
        num_hidden_layers: int = 4,
        num_heads: int = 4,
        head_dim: int | None = None,
        intermediate_size: int | None = None,
        mixer: str = "mc",
        layer_mixers: Sequence[str] | None = None,
        memory: str = "linear",
        aggregation: str = "grm",
        segment_size: int | None = None,
        segment_lengths: Sequence[int] | None = None,
        segmentation: str = "constant",
        init: str = "checkpoint",
        ssc_top_k: int | None = None,
        pooling: str = "mean",
        use_decay: bool = True,
        conv_size: int = 4,
        separate_router: bool = True,
        chunk_size: int | None = None,
        memory_expansion: int = 4,
        memory_depth: int = 2,
        rope_theta: float = 10000.0,
        attention_conv_size: int = 0,
        norm_eps: float = 1e-6,
        initializer_range: float = 0.02,
        tie_word_embeddings: bool = True,
        use_cache: bool = True,
        pad_token_id: int | None = None,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        **kwargs,
    ) -> None:
        _check_misspelled(kwargs)
        check_positive_int("vocab_size", vocab_size)
        check_positive_int("num_hidden_layers", num_hidden_layers)
        check_layer_options(hidden_size, num_heads, head_dim, conv_size, memory_depth, memory_expansion)
        if intermediate_size is None:
            intermediate_size = -(-int(hidden_size * 8 / 3) // 32) * 32
        check_positive_int("intermediate_size", intermediate_size)
        check_choice("mixer", mixer, MIXERS)
        if layer_mixers is not None:
            layer_mixers = list(layer_mixers)
            if len(layer_mixers) != num_hidden_layers:
                raise ValueError(
                    f"layer_mixers must have num_hidden_layers={num_hidden_layers} entries, "
                    f"got {len(layer_mixers)}"
                )
            for entry in layer_mixers:
                check_choice("layer_mixers", entry, MIXERS)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.intermediate_size = intermediate_size
        self.mixer = mixer
        self.layer_mixers = layer_mixers
        self.memory = memory
        self.aggregation = aggregation
        self.segment_size = segment_size
        self.segment_lengths = segment_lengths
        self.segmentation = segmentation
        self.init = init
        self.ssc_top_k = ssc_top_k
        self.pooling = pooling
        spec = self.mc_spec  # checks the MC options with the layer's and the op's code
        check_memory(spec, memory, chunk_size)
        if spec.segment_lengths is not None:
            self.segment_lengths = list(spec.segment_lengths)
        if mixer == "attention" or (layer_mixers is not None and "attention" in layer_mixers):
            check_attention_options(hidden_size, num_heads, rope_theta, attention_conv_size)
        if not norm_eps > 0:
            raise ValueError(f"norm_eps must be > 0, got {norm_eps}")
        self.use_decay = use_decay
        self.conv_size = conv_size
        self.separate_router = separate_router
        self.chunk_size = chunk_size
        self.memory_expansion = memory_expansion
        self.memory_depth = memory_depth
        self.rope_theta = rope_theta
        self.attention_conv_size = attention_conv_size
        self.norm_eps = norm_eps
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        super().__init__(
            tie_word_embeddings=tie_word_embeddings,
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            **kwargs,
        )

    @property
    def mc_spec(self) -> MCSpec:
        """The MC options of the ``"mc"`` layers as one :class:`MCSpec`."""
        return MCSpec(
            aggregation=self.aggregation,
            segment_size=self.segment_size,
            segment_lengths=self.segment_lengths,
            segmentation=self.segmentation,
            top_k=self.ssc_top_k,
            init=self.init,
            pooling=self.pooling,
        )

    def mixer_of(self, layer_idx: int) -> str:
        """The mixer type of layer ``layer_idx``."""
        return self.layer_mixers[layer_idx] if self.layer_mixers is not None else self.mixer


def _check_misspelled(extra: Mapping[str, object]) -> None:
    """Raise ``ValueError`` for an extra keyword that looks like a misspelt MCConfig field.

    Hugging Face configs keep unknown keywords as attributes (saved configs carry keys such as
    ``architectures`` or ``transformers_version``), so an unknown name alone is no error; but one that is
    not a ``PretrainedConfig`` attribute and is close to a field of this config (``segmnet_size``) would
    silently build another model (here: the base RNN).
    """
    fields = [
        name for name in inspect.signature(MCConfig.__init__).parameters if name not in ("self", "kwargs")
    ]
    for name in extra:
        if name in _RENAMED:
            raise ValueError(f"{name} is not an MCConfig field; use {_RENAMED[name]}={extra[name]!r}")
        if hasattr(PretrainedConfig, name) or name in _PRETRAINED_ATTRIBUTES:
            continue
        close = difflib.get_close_matches(name, fields, n=1, cutoff=0.8)
        if close:
            raise ValueError(f"unknown MCConfig option {name!r}; did you mean {close[0]!r}?")


_PRETRAINED_ATTRIBUTES = frozenset(PretrainedConfig().to_dict())
#: the layer's and the op's names of MCConfig fields that the config spells otherwise
_RENAMED = {"top_k": "ssc_top_k"}
