"""Hugging Face-compatible MC language models.

Importing this package registers ``MCConfig`` / ``MCModel`` / ``MCForCausalLM`` under model type
``"mcrnn"`` with ``AutoConfig``, ``AutoModel`` and ``AutoModelForCausalLM``.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from mcrnn.models.cache import MCCache
from mcrnn.models.configuration_mcrnn import MIXERS, MCConfig
from mcrnn.models.modeling_mcrnn import MCBlock, MCForCausalLM, MCModel, MCPreTrainedModel

AutoConfig.register(MCConfig.model_type, MCConfig, exist_ok=True)
AutoModel.register(MCConfig, MCModel, exist_ok=True)
AutoModelForCausalLM.register(MCConfig, MCForCausalLM, exist_ok=True)

__all__ = [
    "MIXERS",
    "MCBlock",
    "MCCache",
    "MCConfig",
    "MCForCausalLM",
    "MCModel",
    "MCPreTrainedModel",
]
