"""``MCConfig``: the Hugging Face configuration of an MC language model (``model_type = "mcrnn"``).

Every field has a default, and an invalid value fails here, at construction, with the field's name.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PretrainedConfig

from mcrnn.ops.segments import AGGREGATIONS, INITS, POOLINGS

MEMORIES = ("linear", "swla", "dla", "titans")
MIXERS = ("mc", "attention")


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


class MCConfig(PretrainedConfig):
    """Configuration of :class:`mcrnn.models.MCForCausalLM`.

    Architecture: ``embedding -> num_hidden_layers x [RMSNorm -> mixer -> RMSNorm -> SwiGLU MLP] ->
    RMSNorm -> LM head``. The mixer of layer ``l`` is ``layer_mixers[l]`` (all ``mixer`` when None):

    - ``"mc"``: :class:`mcrnn.layers.MemoryCachingAttention` with ``memory``, ``aggregation``,
      ``segment_size`` / ``segment_lengths``, ``init``, ``ssc_top_k``, ``pooling``, ``use_decay``,
      ``conv_size``, ``chunk_size`` and ``memory_expansion``; ``segment_size=None`` and
      ``segment_lengths=None`` switch caching off (the base RNN).
    - ``"attention"``: causal softmax attention with RoPE (``rope_theta``), the Transformer++ baseline.

    Args:
        vocab_size: number of token ids (the byte tokenizer needs 257).
        hidden_size: model width; divisible by ``num_heads``.
        num_hidden_layers: number of blocks.
        num_heads: heads of every mixer.
        intermediate_size: SwiGLU width; None -> ``8/3 * hidden_size`` rounded up to a multiple of 32.
        mixer / layer_mixers: see above; ``layer_mixers`` has one entry per layer (a hybrid).
        memory: ``linear``, ``swla``, ``dla`` or ``titans``.
        aggregation: ``residual``, ``grm``, ``soup``, ``ssc`` or ``average``.
        segment_size: constant segment length C (a multiple of ``chunk_size``), or None.
        segment_lengths: explicit segment lengths (an alternative to ``segment_size``), or None.
        init: ``checkpoint`` or ``independent`` (DESIGN.md §4).
        ssc_top_k: cached memories read by ``ssc`` (required for it; the layer's ``top_k``, renamed so
            that it never collides with the sampling option ``top_k`` of ``generate``).
        pooling: router-context pooling, ``mean`` or ``sum``.
        use_decay: data-dependent decay of linear memories.
        conv_size: short causal convolution width (0 disables it).
        chunk_size: inner chunk of the parallel memory update.
        memory_expansion: MLP expansion of deep memories.
        rope_theta: RoPE base of attention layers.
        norm_eps: RMSNorm epsilon.
        initializer_range: std of the normal init of embeddings and linear layers.
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
        intermediate_size: int | None = None,
        mixer: str = "mc",
        layer_mixers: Sequence[str] | None = None,
        memory: str = "linear",
        aggregation: str = "grm",
        segment_size: int | None = 256,
        segment_lengths: Sequence[int] | None = None,
        init: str = "checkpoint",
        ssc_top_k: int | None = None,
        pooling: str = "mean",
        use_decay: bool = True,
        conv_size: int = 4,
        chunk_size: int = 64,
        memory_expansion: int = 4,
        rope_theta: float = 10000.0,
        norm_eps: float = 1e-6,
        initializer_range: float = 0.02,
        tie_word_embeddings: bool = True,
        use_cache: bool = True,
        pad_token_id: int | None = None,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        **kwargs,
    ) -> None:
        for name, value in (
            ("vocab_size", vocab_size),
            ("hidden_size", hidden_size),
            ("num_hidden_layers", num_hidden_layers),
            ("num_heads", num_heads),
            ("chunk_size", chunk_size),
            ("memory_expansion", memory_expansion),
        ):
            _positive_int(name, value)
        if hidden_size % num_heads != 0:
            raise ValueError(f"hidden_size={hidden_size} must be divisible by num_heads={num_heads}")
        if intermediate_size is None:
            intermediate_size = -(-int(hidden_size * 8 / 3) // 32) * 32
        _positive_int("intermediate_size", intermediate_size)
        _choice("mixer", mixer, MIXERS)
        if layer_mixers is not None:
            layer_mixers = list(layer_mixers)
            if len(layer_mixers) != num_hidden_layers:
                raise ValueError(
                    f"layer_mixers must have num_hidden_layers={num_hidden_layers} entries, "
                    f"got {len(layer_mixers)}"
                )
            for entry in layer_mixers:
                _choice("layer_mixers", entry, MIXERS)
        _choice("memory", memory, MEMORIES)
        _choice("aggregation", aggregation, AGGREGATIONS)
        _choice("init", init, INITS)
        _choice("pooling", pooling, POOLINGS)
        if segment_size is not None and segment_lengths is not None:
            raise ValueError("give segment_size or segment_lengths, not both")
        if segment_size is not None:
            _positive_int("segment_size", segment_size)
            if segment_size % chunk_size != 0:
                raise ValueError(f"segment_size={segment_size} must be a multiple of chunk_size={chunk_size}")
        if segment_lengths is not None:
            segment_lengths = [int(n) for n in segment_lengths]
            for n in segment_lengths:
                _positive_int("segment_lengths", n)
        if aggregation == "ssc":
            if ssc_top_k is None:
                raise ValueError("ssc_top_k is required when aggregation='ssc'")
            _positive_int("ssc_top_k", ssc_top_k)
        if isinstance(conv_size, bool) or not isinstance(conv_size, int) or conv_size < 0:
            raise ValueError(f"conv_size must be an int >= 0, got {conv_size!r}")
        if not rope_theta > 0:
            raise ValueError(f"rope_theta must be > 0, got {rope_theta}")
        if not norm_eps > 0:
            raise ValueError(f"norm_eps must be > 0, got {norm_eps}")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_heads = num_heads
        self.intermediate_size = intermediate_size
        self.mixer = mixer
        self.layer_mixers = layer_mixers
        self.memory = memory
        self.aggregation = aggregation
        self.segment_size = segment_size
        self.segment_lengths = segment_lengths
        self.init = init
        self.ssc_top_k = ssc_top_k
        self.pooling = pooling
        self.use_decay = use_decay
        self.conv_size = conv_size
        self.chunk_size = chunk_size
        self.memory_expansion = memory_expansion
        self.rope_theta = rope_theta
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

    def mixer_of(self, layer_idx: int) -> str:
        """The mixer type of layer ``layer_idx``."""
        return self.layer_mixers[layer_idx] if self.layer_mixers is not None else self.mixer


def _choice(name: str, value: object, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")
