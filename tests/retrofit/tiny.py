"""Tiny random models of every family the retrofit supports, built in process (no downloads)."""

from __future__ import annotations

import torch
import transformers

VOCAB = 64
COMMON = {
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "intermediate_size": 64,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "initializer_range": 0.2,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "bos_token_id": 1,
}
#: gated DeltaNet hosts: 2 key heads, 4 value heads (GVA)
DELTA = {
    "head_dim": 16,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    "linear_key_head_dim": 8,
    "linear_value_head_dim": 8,
    "layer_types": ["linear_attention", "full_attention"],
}
MOE = {
    "num_experts": 2,
    "num_experts_per_tok": 1,
    "moe_intermediate_size": 16,
    "shared_expert_intermediate_size": 16,
}
#: Mamba2 hosts: 4 heads of 16 channels, 2 groups of state 8
SSD = {
    "mamba_n_heads": 4,
    "mamba_d_head": 16,
    "mamba_n_groups": 2,
    "mamba_d_state": 8,
    "mamba_expand": 2,
    "mamba_chunk_size": 8,
}
CONFIGS = {
    "qwen3_5_text": DELTA,
    "qwen3_5_moe_text": {**DELTA, **MOE},
    "qwen3_next": {**DELTA, **MOE},
    "olmo_hybrid": {key: value for key, value in DELTA.items() if key != "head_dim"},
    "mamba2": {"num_heads": 4, "head_dim": 16, "state_size": 8, "n_groups": 2, "expand": 2, "chunk_size": 8},
    "bamba": {**SSD, "attn_layer_indices": [1]},
    "falcon_h1": {**SSD, "mamba_d_ssm": 64},
    "granitemoehybrid": {
        **SSD,
        "layer_types": ["mamba", "attention"],
        "num_local_experts": 2,
        "num_experts_per_tok": 1,
    },
    "kimi_linear": {
        "linear_num_heads": 4,
        "linear_head_dim": 8,
        "layer_types": ["linear_attention", "full_attention"],
        "mlp_layer_types": ["dense", "dense"],
        "num_key_value_heads": 2,
        "q_lora_rank": None,
        "kv_lora_rank": 16,
        "qk_rope_head_dim": 8,
        "qk_nope_head_dim": 8,
        "v_head_dim": 8,
    },
    "nemotron_h": {
        "mamba_num_heads": 4,
        "mamba_head_dim": 16,
        "n_groups": 2,
        "ssm_state_size": 8,
        "expand": 2,
        "chunk_size": 8,
        "layers_block_type": ["mamba", "attention"],
        "head_dim": 16,
    },
}
DELTA_FAMILIES = ("qwen3_5_text", "qwen3_5_moe_text", "qwen3_next", "olmo_hybrid")
KDA_FAMILIES = ("kimi_linear",)
SSD_FAMILIES = ("mamba2", "bamba", "falcon_h1", "granitemoehybrid", "nemotron_h")


def tiny_model(
    name: str, dtype: torch.dtype = torch.float32, seed: int = 0, **overrides: object
) -> transformers.PreTrainedModel:
    """A random ``name`` causal LM (eval mode) whose recurrent layer matters to the logits."""
    options = {**COMMON, **CONFIGS[name], **overrides}
    if name == "mamba2":
        for key in ("num_attention_heads", "num_key_value_heads", "intermediate_size"):
            options.pop(key)
    torch.manual_seed(seed)
    config = transformers.AutoConfig.for_model(name, **options)
    return transformers.AutoModelForCausalLM.from_config(config).to(dtype).eval()


def logits(model: transformers.PreTrainedModel, ids: torch.Tensor, **kwargs: object) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, **kwargs).logits


def decode_logits(model: transformers.PreTrainedModel, ids: torch.Tensor, prefill: int) -> torch.Tensor:
    """Logits of a prefill of ``prefill`` tokens then one token at a time through the host cache."""
    with torch.no_grad():
        out = model(ids[:, :prefill], use_cache=True)
        cache, steps = _cache(out), [out.logits]
        for t in range(prefill, ids.shape[1]):
            out = model(ids[:, t : t + 1], cache=cache, use_cache=True)
            cache = _cache(out)
            steps.append(out.logits)
    return torch.cat(steps, dim=1)


def _cache(out: object) -> object:
    cache = getattr(out, "past_key_values", None)
    return cache if cache is not None else out.cache
