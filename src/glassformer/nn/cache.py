"""A preallocated key/value cache for decoding (filled by ``MultiHeadAttention``, read by every later step).

During generation each new token attends to the keys and values of every earlier token. Recomputing them costs
a full forward pass per token; the cache keeps them. Memory is allocated once, for the whole run:

    keys, values: (num_layers, batch, heads, max_length, head_dim) each
    bytes = 2 · num_layers · batch · heads · max_length · head_dim · element size

so peak cache memory is bounded by batch × max_length and known before the first token.

``KVCache`` holds a batch that advances together (one ``length`` for every row). ``SlotCache`` is the serving
variant (continuous batching): ``slots`` rows, each a sequence of its own with its own length, which a scheduler
fills and frees one by one. A forward pass runs on a ``SlotView`` of consecutive slots ``start:stop``: each row
writes its new keys and values at its own length, and the model masks every row to the positions it has
(``SlotView.attention_mask``), so rows of any lengths decode together.

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
    allocated once."""

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
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
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


class SlotCache(CacheStorage):
    """Keys and values for ``slots`` independent sequences of up to ``max_length`` positions each:
    ``(num_layers, slots, heads, max_length, head_dim)``, with ``lengths[slot]`` positions filled in each."""

    def __init__(self, num_layers: int, slots: int, num_heads: int, max_length: int, head_dim: int, dtype=torch.float32,
                 device=None):  # fmt: skip
        super().__init__(num_layers, slots, num_heads, max_length, head_dim, dtype, device)
        self.lengths = [0] * slots

    def view(self, start: int, stop: int, active: list[bool] | None = None) -> SlotView:
        """Slots ``start:stop`` as one batch for a forward pass (no copy). Only the rows marked in ``active``
        (default: all) advance; the others ride along (a free slot between busy ones) and keep nothing."""
        if not 0 <= start < stop <= len(self.lengths):
            raise ValueError(f"slots {start}:{stop} are not within the cache's {len(self.lengths)} slots")
        if active is not None and len(active) != stop - start:
            raise ValueError(f"active has {len(active)} entries for {stop - start} slots")
        return SlotView(self, start, stop, active)

    def free(self, slot: int) -> None:
        """Forget slot ``slot``'s sequence; the next one written there starts at position 0."""
        self.lengths[slot] = 0

    def copy(self, source: int, target: int, length: int) -> None:
        """Slot ``target`` becomes the first ``length`` positions of slot ``source`` (a copy of their keys and values
        in every layer): the same prompt read once for several requests."""
        if not 0 < length <= self.lengths[source]:
            raise ValueError(f"slot {source} holds {self.lengths[source]} positions, not {length}")
        self.keys[:, target, :, :length] = self.keys[:, source, :, :length]
        self.values[:, target, :, :length] = self.values[:, source, :, :length]
        self.lengths[target] = length


class SlotView:
    """Consecutive slots of a ``SlotCache`` as the ``cache`` of one forward pass. ``length`` is the longest row's
    length (the model's ``past``); ``advance(n)`` moves the ``active`` rows on by ``n``."""

    def __init__(self, cache: SlotCache, start: int, stop: int, active: list[bool] | None = None):
        self.slots = cache
        self.start, self.stop = start, stop
        self.active = active if active is not None else [True] * (stop - start)
        self.row_lengths = cache.lengths[start:stop]
        self.length = max(self.row_lengths)
        self.max_length = cache.max_length
        device = cache.keys.device  # where each row writes one new position (decoding), made once for all layers
        self.rows = torch.arange(stop - start, device=device)
        self.write_at = torch.tensor(self.row_lengths, device=device)

    def attention_mask(self, seq: int) -> torch.Tensor:
        """``(rows, length + seq)``: 1 at the positions each row has, its ``seq`` new ones included, 0 after."""
        positions = torch.arange(self.length + seq, device=self.write_at.device)
        return (positions[None] < self.write_at[:, None] + seq).long()

    def layer(self, index: int) -> SlotLayerCache:
        return SlotLayerCache(self, index)

    def advance(self, n: int) -> None:
        for row, active in enumerate(self.active):
            if active:
                self.slots.lengths[self.start + row] += n


class SlotLayerCache:
    """One layer of a ``SlotView``: ``update`` writes each row's new keys/values at that row's length and returns
    every row's keys/values up to the longest, ``(rows, heads, length + new, head_dim)``; a row's positions past
    its own length hold nothing it may attend to (its attention mask says so)."""

    def __init__(self, view: SlotView, layer: int):
        self.cache = view
        self.layer = layer

    @property
    def length(self) -> int:
        """The positions the longest row already holds: the offset of the new queries in the keys returned."""
        return self.cache.length

    def update(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        view, new = self.cache, keys.size(2)
        end = view.length + new
        if end > view.max_length:
            raise ValueError(
                f"the key/value cache holds {view.max_length} positions per slot and {end} were asked for; "
                "allocate it with a larger max_length"
            )
        all_keys = view.slots.keys[self.layer, view.start : view.stop]  # (rows, heads, max_length, head_dim)
        all_values = view.slots.values[self.layer, view.start : view.stop]
        if new == 1:  # decoding: row r writes at position row_lengths[r]
            all_keys[view.rows, :, view.write_at] = keys[:, :, 0]
            all_values[view.rows, :, view.write_at] = values[:, :, 0]
        else:  # a prompt: rows of one length only (the causal mask counts from the longest row)
            if len(set(view.row_lengths)) > 1:
                raise ValueError("several new positions at once need rows of equal length; run prompts one by one")
            for row, start in enumerate(view.row_lengths):
                all_keys[row, :, start : start + new] = keys[row]
                all_values[row, :, start : start + new] = values[row]
        return all_keys[:, :, :end], all_values[:, :, :end]
