"""A preallocated key/value cache for decoding (filled by ``MultiHeadAttention``, read by every later step).

During generation each new token attends to the keys and values of every earlier token. Recomputing them costs
a full forward pass per token; the cache keeps them. Memory is allocated once, for the whole run:

    keys, values: (num_layers, batch, heads, max_length, head_dim) each
    bytes = 2 · num_layers · batch · heads · max_length · head_dim · element size

so peak cache memory is bounded by batch × max_length and known before the first token.
"""

from __future__ import annotations

import torch


class LayerCache:
    """One layer's view of a ``KVCache``: ``update`` writes the new keys/values after the cached ones and returns
    all of them, ``(batch, heads, length + new, head_dim)``."""

    def __init__(self, cache: KVCache, layer: int):
        self.cache = cache
        self.layer = layer

    def update(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = self.cache.length, self.cache.length + keys.size(2)
        if end > self.cache.max_length:
            raise ValueError(
                f"the key/value cache holds {self.cache.max_length} positions and {end} were asked for; "
                "allocate it with a larger max_length"
            )
        self.cache.keys[self.layer, :, :, start:end] = keys
        self.cache.values[self.layer, :, :, start:end] = values
        return self.cache.keys[self.layer, :, :, :end], self.cache.values[self.layer, :, :, :end]


class KVCache:
    """Keys and values of every layer for ``max_length`` positions. ``length`` counts the positions filled;
    the model calls ``advance(n)`` after a forward pass over ``n`` new positions."""

    def __init__(
        self,
        num_layers: int,
        batch: int,
        num_heads: int,
        max_length: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ):
        shape = (num_layers, batch, num_heads, max_length, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.max_length = max_length
        self.length = 0

    def layer(self, index: int) -> LayerCache:
        return LayerCache(self, index)

    def advance(self, n: int) -> None:
        self.length += n

    def reorder(self, batch_index: torch.Tensor) -> None:
        """Keep rows ``batch_index`` of the batch (beam search: each surviving beam takes its parent's cache)."""
        self.keys = self.keys.index_select(1, batch_index)
        self.values = self.values.index_select(1, batch_index)

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes
