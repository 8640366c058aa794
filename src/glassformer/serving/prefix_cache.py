"""Prefix caching: the full blocks of prompts already read stay in the server's paged cache
(``glassformer.nn.slot_cache``) after their request ends, and a later prompt that starts with the same blocks — a
system prompt, the earlier turns of a growing chat — puts them at the head of its block table (held, not copied), so
that only the rest of its prompt is run through the model.

    prompt   [ block 0 | block 1 | block 2 | rest ]         blocks of the cache's ``block`` tokens
    key      k0 = (None, tokens of block 0)                   k_i = (hash(k_{i-1}), tokens of block i): a block
             k1 = (hash(k0), tokens of block 1) ...           is found only after the same blocks before it

An entry holds one reference to its block (rotary positions included: a prefix is always at the start); a block is
free again once neither the cache nor any sequence holds it. At most ``capacity`` entries are kept; the least
recently used goes first, and a prompt's blocks are used last to first, so that of one prompt the tail goes before
the head (a block whose parent is gone could never be found again). When the pool runs out, ``reclaim`` gives back
the least recently used blocks that only the prefix cache holds. A match leaves at least the prompt's last token to
run, whose logits pick the first new token.
"""

from __future__ import annotations

from collections import OrderedDict

from glassformer.nn.slot_cache import SlotCache


class PrefixCache:
    """``match`` a prompt's cached blocks, ``restore`` them into a slot, ``store`` a slot's prompt blocks; up to
    ``capacity`` blocks of ``cache``."""

    def __init__(self, cache: SlotCache, capacity: int):
        if capacity < 0:
            raise ValueError(f"a prefix cache needs capacity >= 0 blocks, got {capacity}")
        self.cache, self.capacity, self.block = cache, capacity, cache.block
        self.entries: OrderedDict[tuple, int] = OrderedDict()  # key -> block
        cache.reclaim = self.reclaim

    def keys_of(self, tokens: list[int]) -> list[tuple]:
        """The key of each full block of ``tokens``, in order."""
        keys, parent = [], None
        for start in range(0, len(tokens) - self.block + 1, self.block):
            key = (parent, tuple(tokens[start : start + self.block]))
            keys.append(key)
            parent = hash(key)
        return keys

    def match(self, prompt: list[int], touch: bool = True) -> list[int]:
        """The cached blocks the prompt starts with (as many as are found in a row), most recently used now (unless
        not ``touch``: a look that changes nothing); never the whole prompt: its last token is left to run."""
        found = []
        for key in self.keys_of(prompt[:-1]):
            block = self.entries.get(key)
            if block is None:
                break
            found.append((key, block))
        for key, _ in reversed(found) if touch else ():  # used now, the first block last: evicted after the rest
            self.entries.move_to_end(key)
        return [block for _, block in found]

    def restore(self, slot: int, blocks: list[int]) -> int:
        """The empty ``slot`` starts with ``blocks``; returns the positions now filled."""
        return self.cache.attach(slot, blocks)

    def store(self, slot: int, prompt: list[int]) -> None:
        """Keep the full blocks of ``prompt``, which ``slot`` holds, evicting the least recently used entries past
        ``capacity``."""
        if self.capacity == 0:
            return
        keys = self.keys_of(prompt)[: self.capacity]
        table = self.cache.tables[slot]
        for index, key in enumerate(keys):
            if key not in self.entries:
                self.cache.retain(table[index])
                self.entries[key] = table[index]
        for key in reversed(keys):
            self.entries.move_to_end(key)
        while len(self.entries) > self.capacity:
            self.cache.release(self.entries.popitem(last=False)[1])

    def reclaim(self, wanted: int) -> int:
        """Give back up to ``wanted`` blocks that only this cache holds, least recently used first; how many."""
        idle = [key for key, block in self.entries.items() if self.cache.refs[block] == 1][:wanted]
        for key in idle:
            self.cache.release(self.entries.pop(key))
        return len(idle)

    def idle(self) -> set[int]:
        """The blocks only this cache holds (``reclaim`` could give them back)."""
        return {block for block in self.entries.values() if self.cache.refs[block] == 1}

    @property
    def blocks(self) -> int:
        return len(self.entries)
