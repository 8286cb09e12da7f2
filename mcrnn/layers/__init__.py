"""nn.Module token mixers built on :mod:`mcrnn.ops`."""

from mcrnn.layers.mc_attention import LayerCache, MemoryCachingAttention

__all__ = ["LayerCache", "MemoryCachingAttention"]
