"""Moved to ``glassformer.nn.cache`` (the cache lives with the attention that fills it); this name keeps working."""

from glassformer.nn.cache import KVCache, LayerCache

__all__ = ["KVCache", "LayerCache"]
