"""A preallocated key/value cache for decoding (filled by ``MultiHeadAttention``, read by every later step).

During generation each new token attends to the keys and values of every earlier token. Recomputing them costs
a full forward pass per token; the cache keeps them. Memory is allocated once, for the whole run:

    keys, values: (num_layers, batch, heads, max_length, head_dim) each
    bytes = 2 · num_layers · batch · heads · max_length · head_dim · element size

so peak cache memory is bounded by batch × max_length and known before the first token.

``KVCache`` holds a batch that advances together (one ``length`` for every row). The server's cache, sequences of
their own lengths in a pool of blocks, is ``glassformer.nn.slot_cache.SlotCache``.

What attention sees of either is one protocol, a layer's cache: ``length`` (the positions already held, the new
queries' offset) and ``update(keys, values)`` (write the new ones, return all); it never reaches inside.
"""

from __future__ import annotations

import torch


class LayerCache:
    """One layer's view of a ``KVCache``: ``update`` writes the new keys/values after the cached ones and returns
    all of them, ``(batch, heads, length + new, head_dim)``."""

    def __init__(self, cache: KVCache, layer: int):
        self.cache = cache
        self.layer = layer

    @property
    def length(self) -> int:
        """The positions already cached: the offset of the queries that ``update`` is called for."""
        return self.cache.length

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


class CacheStorage:
    """The memory of a cache: ``keys`` and ``values``, each ``(num_layers, rows, heads, max_length, head_dim)``,
    allocated once and not cleared: a position is read only after it is written (every row advances together, and
    left padding is written with the padding's own keys), so the system's pages are touched only as positions fill
    (a batch whose answers end early never pays for the rest)."""

    def __init__(
        self,
        num_layers: int,
        rows: int,
        num_heads: int,
        max_length: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ):
        shape = (num_layers, rows, num_heads, max_length, head_dim)
        self.keys = torch.empty(shape, dtype=dtype, device=device)
        self.values = torch.empty(shape, dtype=dtype, device=device)
        self.max_length = max_length

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes


class KVCache(CacheStorage):
    """Keys and values of every layer for ``max_length`` positions of a ``batch``. ``length`` counts the positions
    filled; the model calls ``advance(n)`` after a forward pass over ``n`` new positions."""

    def __init__(self, num_layers: int, batch: int, num_heads: int, max_length: int, head_dim: int, dtype=torch.float32,
                 device=None):  # fmt: skip
        super().__init__(num_layers, batch, num_heads, max_length, head_dim, dtype, device)
        self.length = 0

    def layer(self, index: int) -> LayerCache:
        return LayerCache(self, index)

    def advance(self, n: int) -> None:
        self.length += n

    def rewind(self, length: int) -> None:
        """Forget every position from ``length`` on (speculative decoding: the draft tokens that were rejected);
        they are overwritten by the next ones written."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot rewind a cache of {self.length} positions to {length}")
        self.length = length

    def reorder(self, batch_index: torch.Tensor) -> None:
        """Keep rows ``batch_index`` of the batch (beam search: each surviving beam takes its parent's cache). Only the
        ``length`` positions filled of the rows that take another row's are copied, in place."""
        index = batch_index.to(self.keys.device)
        changed = (index != torch.arange(index.numel(), device=index.device)).nonzero().squeeze(1)
        if changed.numel() == 0:
            return
        taken = index[changed]
        for tensor in (self.keys, self.values):
            filled = tensor[:, :, :, : self.length]
            filled.index_copy_(1, changed, filled.index_select(1, taken))
