"""Prefix caching: the keys and values of prompts' full blocks, kept after a request has read its prompt and copied
into the slot of a later request whose prompt starts with the same blocks — a system prompt, the earlier turns of
a growing chat — so that only the rest of its prompt is run through the model.

    prompt   [ block 0 | block 1 | block 2 | rest ]         blocks of ``block`` tokens
    key      k0 = (None, tokens of block 0)                   k_i = (hash(k_{i-1}), tokens of block i): a block
             k1 = (hash(k0), tokens of block 1) ...           is found only after the same blocks before it

A block's entry is its keys and values at its positions, ``(layers, heads, block, head_dim)`` each (rotary
positions included: a prefix is always at the start). At most ``capacity`` blocks are kept; the least recently
used goes first, and a prompt's blocks are used last to first, so that of one prompt the tail goes before the
head (a block whose parent is gone could never be found again). A match leaves at least the prompt's last token
to run, whose logits pick the first new token.
Copying a block is a memory copy (SmolLM2, float32: 1.5 MB a block of 32), far cheaper than its forward pass.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from glassformer.nn.cache import SlotCache

DEFAULT_BLOCK = 32


class PrefixCache:
    """``match`` a prompt's cached blocks, ``restore`` them into a slot, ``store`` a slot's prompt blocks."""

    def __init__(self, capacity: int, block: int = DEFAULT_BLOCK):
        if capacity < 0 or block < 1:
            raise ValueError(f"a prefix cache needs capacity >= 0 blocks and block >= 1 token, got {capacity}, {block}")
        self.capacity, self.block = capacity, block
        self.entries: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def keys_of(self, tokens: list[int]) -> list[tuple]:
        """The key of each full block of ``tokens``, in order."""
        keys, parent = [], None
        for start in range(0, len(tokens) - self.block + 1, self.block):
            key = (parent, tuple(tokens[start : start + self.block]))
            keys.append(key)
            parent = hash(key)
        return keys

    def match(self, prompt: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The cached blocks the prompt starts with (as many as are found in a row), most recently used now; never
        the whole prompt: its last token is left to run."""
        found = []
        for key in self.keys_of(prompt[:-1]):
            entry = self.entries.get(key)
            if entry is None:
                break
            found.append((key, entry))
        for key, _ in reversed(found):  # used now, the first block last: evicted after the blocks that follow it
            self.entries.move_to_end(key)
        return [entry for _, entry in found]

    def restore(self, cache: SlotCache, slot: int, blocks: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
        """Write ``blocks`` at the start of ``slot`` (emptied first); returns the positions now filled."""
        position = 0
        for keys, values in blocks:
            cache.keys[:, slot, :, position : position + self.block] = keys
            cache.values[:, slot, :, position : position + self.block] = values
            position += self.block
        cache.lengths[slot] = position
        return position

    def store(self, cache: SlotCache, slot: int, prompt: list[int]) -> None:
        """Keep the full blocks of ``prompt``, whose keys and values ``slot`` holds, evicting the least recently
        used blocks past ``capacity``."""
        if self.capacity == 0:
            return
        keys = self.keys_of(prompt)[: self.capacity]
        for index, key in enumerate(keys):
            if key not in self.entries:
                where = slice(index * self.block, (index + 1) * self.block)
                self.entries[key] = (cache.keys[:, slot, :, where].clone(), cache.values[:, slot, :, where].clone())
        for key in reversed(keys):
            self.entries.move_to_end(key)
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)

    @property
    def blocks(self) -> int:
        return len(self.entries)

    @staticmethod
    def block_bytes(cache: SlotCache, block: int = DEFAULT_BLOCK) -> int:
        """The memory one block takes: its keys and values in every layer."""
        layers, _, heads, _, head_dim = cache.keys.shape
        return 2 * layers * heads * block * head_dim * cache.keys.element_size()
