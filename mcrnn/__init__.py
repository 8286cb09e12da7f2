"""mcrnn: Memory Caching for recurrent sequence models (Behrouz et al., 2026).

Importing the package registers the ``"mcrnn"`` model type with ``transformers``' Auto classes.
"""

from mcrnn.models import MCConfig, MCForCausalLM, MCModel

__all__ = ["MCConfig", "MCForCausalLM", "MCModel"]
