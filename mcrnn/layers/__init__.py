"""nn.Module token mixers built on :mod:`mcrnn.ops`."""

from mcrnn.layers.mc_attention import LayerCache, MemoryCachingAttention, RowCaches

__all__ = ["LayerCache", "MemoryCachingAttention", "RowCaches"]
