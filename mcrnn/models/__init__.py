"""Hugging Face-compatible MC language models.

Importing this package registers ``MCConfig`` / ``MCModel`` / ``MCForCausalLM`` under model type
``"mcrnn"`` with ``AutoConfig``, ``AutoModel`` and ``AutoModelForCausalLM``, and marks them as custom code
for those Auto classes: ``save_pretrained`` then writes an ``auto_map`` into ``config.json`` and copies
``configuration_mcrnn.py`` / ``modeling_mcrnn.py`` (which import the installed ``mcrnn``) next to it, so
that ``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` loads the folder in a
process that never imported mcrnn (lm-evaluation-harness, pipelines, serving tools).
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from mcrnn.models.cache import MCCache
from mcrnn.models.configuration_mcrnn import MIXERS, MCConfig
from mcrnn.models.modeling_mcrnn import MCBlock, MCForCausalLM, MCModel, MCPreTrainedModel

AutoConfig.register(MCConfig.model_type, MCConfig, exist_ok=True)
AutoModel.register(MCConfig, MCModel, exist_ok=True)
AutoModelForCausalLM.register(MCConfig, MCForCausalLM, exist_ok=True)
MCConfig.register_for_auto_class()
MCModel.register_for_auto_class("AutoModel")
MCForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = [
    "MIXERS",
    "MCBlock",
    "MCCache",
    "MCConfig",
    "MCForCausalLM",
    "MCModel",
    "MCPreTrainedModel",
]
