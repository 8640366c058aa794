"""The serving cache (continuous batching): ``slots`` sequences of their own lengths, their keys and values in a
pool of fixed-size blocks that sequences take as they grow and give back when they end — a paged key/value cache.

    pool       keys, values: (num_layers, 1 + blocks, heads, block, head_dim) each; block 0 is the null block
    a slot     a block table (the pool's blocks holding its positions 0..block-1, block..2·block-1, ...) and a length:
               position p of slot s is in block tables[s][p // block], at p % block
    refs       how many tables (and the prefix cache) hold each block; a block with none is free

A slot reserves the blocks for the positions it is about to write (``reserve``, before a forward pass); ``OutOfBlocks``
says the pool is spent, and the scheduler then waits or preempts a sequence (``glassformer.serving.scheduler``). Only
memory in use is taken: short answers leave blocks for more sequences than a fixed slot per maximum context would.
A full block can be held by several tables at once — the same prompt beginning (``glassformer.serving.prefix_cache``),
``n`` choices of one prompt (``copy``) — and is never written again (a slot writes only past its length, and a shared
block lies wholly before it), so sharing needs no copy; only a partly filled block is copied when a slot forks.

A forward pass runs on a ``SlotView`` of any slots, a row each: each row writes its new keys and values at its own
length, and the model masks every row to the positions it has (``SlotView.attention_mask``), so rows of any lengths
decode together; prompts of one starting length are read together right-padded (``sizes``: each row's real new
tokens). A row marked inactive rides along with the null block as its table: it writes there and keeps nothing.
Attention sees a layer's view through the protocol every cache has (``length``, ``update``); ``update`` gathers each
row's blocks into ``(rows, heads, positions, head_dim)`` for the modules, and the fused CPU step reads the blocks in
place through the table (``SlotView.table``).

``BeamBlocks`` is beam search's cache on the same pool (where the fused step decodes): each beam takes its parent's
history by taking its blocks, and only a partly filled last block that several beams now hold is copied.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

DEFAULT_BLOCK = 32  # positions per block


def default_blocks(slots: int, max_length: int, extra: int = 0, block: int = DEFAULT_BLOCK) -> int:
    """Blocks enough for ``slots`` sequences of ``max_length`` positions each, and ``extra`` more."""
    return slots * -(-max_length // block) + extra


class OutOfBlocks(RuntimeError):
    """The pool has no free block (and nothing could be reclaimed): wait for a sequence to end, or preempt one."""


class SlotCache:
    """``slots`` sequences of up to ``max_length`` positions in a pool of ``blocks`` blocks of ``block`` positions
    (default: enough for every slot's whole ``max_length``). ``lengths[slot]``: the positions filled.

    The pool starts zeroed: the modules gather a view's blocks up to its longest row, so a shorter row's unwritten
    positions are read (masked, but a masked NaN would still reach the output). ``zeroed=False`` leaves it unwritten
    for views whose rows all hold the same length (``BeamBlocks``): the pages are then touched only as blocks fill.
    """

    def __init__(self, num_layers: int, slots: int, num_heads: int, max_length: int, head_dim: int, dtype=torch.float32,
                 device=None, blocks: int | None = None, block: int = DEFAULT_BLOCK, zeroed: bool = True):  # fmt: skip
        if block < 1 or max_length < 1:
            raise ValueError(f"a slot cache needs block >= 1 and max_length >= 1, got {block}, {max_length}")
        self.block, self.max_length = block, max_length
        self.max_blocks = -(-max_length // block)  # the longest table
        self.blocks = default_blocks(slots, max_length, 0, block) if blocks is None else blocks
        if self.blocks < 1:
            raise ValueError(f"a slot cache needs at least one block, got {self.blocks}")
        shape = (num_layers, 1 + self.blocks, num_heads, block, head_dim)
        allocate = torch.zeros if zeroed else torch.empty
        self.keys = allocate(shape, dtype=dtype, device=device)
        self.values = allocate(shape, dtype=dtype, device=device)
        self.lengths = [0] * slots
        self.tables: list[list[int]] = [[] for _ in range(slots)]
        self.refs = [0] * (1 + self.blocks)
        self.free_blocks = list(range(self.blocks, 0, -1))  # a stack: the lowest block first
        # frees up to n blocks that only a prefix cache holds, returns how many (set by the prefix cache)
        self.reclaim: Callable[[int], int] | None = None

    # --- blocks ------------------------------------------------------------------------------------------------------

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    @property
    def block_bytes(self) -> int:
        """The memory of one block: its positions' keys and values in every layer."""
        return self.nbytes // (1 + self.blocks)

    @property
    def used_blocks(self) -> int:
        return self.blocks - len(self.free_blocks)

    def blocks_for(self, length: int) -> int:
        return -(-length // self.block)

    def retain(self, block: int) -> None:
        self.refs[block] += 1

    def release(self, block: int) -> None:
        self.refs[block] -= 1
        if self.refs[block] == 0:
            self.free_blocks.append(block)

    def _take(self) -> int:
        if not self.free_blocks and self.reclaim is not None:
            self.reclaim(1)
        if not self.free_blocks:
            raise OutOfBlocks(f"all {self.blocks} key/value blocks are in use")
        block = self.free_blocks.pop()
        self.refs[block] = 1
        return block

    # --- slots -------------------------------------------------------------------------------------------------------

    def reserve(self, slot: int, length: int) -> None:
        """Give ``slot`` the blocks for its first ``length`` positions (those it lacks): ``OutOfBlocks`` where the pool
        cannot, keeping the ones it got."""
        if length > self.max_length:
            raise ValueError(f"the key/value cache holds {self.max_length} positions per slot, not {length}")
        table = self.tables[slot]
        while len(table) * self.block < length:
            table.append(self._take())

    def free(self, slot: int) -> None:
        """Forget slot ``slot``'s sequence and give its blocks back; the next one written there starts at position 0."""
        for block in self.tables[slot]:
            self.release(block)
        self.tables[slot], self.lengths[slot] = [], 0

    def attach(self, slot: int, blocks: list[int]) -> int:
        """An empty ``slot`` starts with the full ``blocks`` (held, not copied); returns the positions now filled."""
        if self.tables[slot]:
            raise ValueError(f"slot {slot} is not empty")
        for block in blocks:
            self.retain(block)
        self.tables[slot] = list(blocks)
        self.lengths[slot] = len(blocks) * self.block
        return self.lengths[slot]

    def copy(self, source: int, target: int, length: int) -> None:
        """The empty slot ``target`` becomes the first ``length`` positions of slot ``source``: their full blocks
        shared, a partly filled last block copied (the same prompt read once for several requests)."""
        if not 0 < length <= self.lengths[source]:
            raise ValueError(f"slot {source} holds {self.lengths[source]} positions, not {length}")
        full, rest = divmod(length, self.block)
        self.attach(target, self.tables[source][:full])
        if rest:
            self.reserve(target, length)
            here, there = self.tables[target][full], self.tables[source][full]
            self.keys[:, here, :, :rest] = self.keys[:, there, :, :rest]
            self.values[:, here, :, :rest] = self.values[:, there, :, :rest]
        self.lengths[target] = length

    def view(self, slots: Sequence[int], active: list[bool] | None = None, sizes: list[int] | None = None) -> SlotView:
        """The slots ``slots`` (any of them, in any order) as the rows of one batch for a forward pass. Only the rows
        marked in ``active`` (default: all) write and advance; the others ride along on the null block. ``sizes``:
        each row's count of real new tokens where a batch of prompts is right-padded (default: all of them)."""
        slots = list(slots)
        if not slots or not all(0 <= slot < len(self.lengths) for slot in slots) or len(set(slots)) < len(slots):
            raise ValueError(f"slots {slots} are not distinct slots of the cache's {len(self.lengths)}")
        for what, given in (("active", active), ("sizes", sizes)):
            if given is not None and len(given) != len(slots):
                raise ValueError(f"{what} has {len(given)} entries for {len(slots)} slots")
        return SlotView(self, slots, active, sizes)


class SlotView:
    """Slots of a ``SlotCache`` as the ``cache`` of one forward pass, a row each. ``length`` is the longest row's
    length (the model's ``past``); ``table`` ``(rows, max_blocks)`` each row's blocks (0, the null block, past its
    own and for inactive rows); ``advance(n)`` moves the active rows on by ``n`` (or by their ``sizes``)."""

    def __init__(self, cache: SlotCache, slots: list[int], active: list[bool] | None = None,
                 sizes: list[int] | None = None, table: torch.Tensor | None = None):  # fmt: skip
        """``table`` ``(rows, n)``: every row active and holding these n blocks (``BeamBlocks``' rows), given as one
        tensor instead of read from the slots' tables."""
        self.slot_cache, self.slot_ids, self.sizes = cache, slots, sizes
        self.active = active if active is not None else [True] * len(slots)
        self.row_lengths = [cache.lengths[slot] for slot in slots]
        self.length = max(self.row_lengths)
        self.max_length = cache.max_length
        device = cache.keys.device
        if table is not None:
            self.table = F.pad(table, (0, cache.max_blocks - table.size(1)))
            self.capacity = [table.size(1) * cache.block] * len(slots)
        else:
            tables = [cache.tables[slot] if active else [] for slot, active in zip(slots, self.active, strict=True)]
            self.table = torch.tensor([t + [0] * (cache.max_blocks - len(t)) for t in tables], dtype=torch.long)
            # the positions each row may write up to (its reserved blocks; anything for a row on the null block)
            self.capacity = [
                len(t) * cache.block if a else cache.max_length for t, a in zip(tables, self.active, strict=True)
            ]
        self.checked = 0  # the new positions check_room found room for (once per pass, not per layer)
        self.device_table = self.table.to(device)
        self.rows = torch.arange(len(slots), device=device)
        self.write_at = torch.tensor(self.row_lengths, device=device)  # where each row writes one new position

    def attention_mask(self, seq: int) -> torch.Tensor:
        """``(rows, length + seq)``: 1 at the positions each row has, its ``seq`` new ones (or its ``sizes``)
        included, 0 after."""
        positions = torch.arange(self.length + seq, device=self.write_at.device)
        new = seq if self.sizes is None else torch.tensor(self.sizes, device=self.write_at.device)[:, None]
        return (positions[None] < self.write_at[:, None] + new).long()

    def layer(self, index: int) -> SlotLayerCache:
        return SlotLayerCache(self, index)

    def check_room(self, new: int) -> None:
        """A ValueError where a row would write past its reserved blocks or the slot's ``max_length``."""
        if new <= self.checked:
            return
        end = self.length + new
        if end > self.max_length:
            raise ValueError(
                f"the key/value cache holds {self.max_length} positions per slot and {end} were asked for; "
                "allocate it with a larger max_length"
            )
        for length, capacity in zip(self.row_lengths, self.capacity, strict=True):
            if length + new > capacity:
                raise ValueError(f"a slot writes position {length + new - 1} past its blocks; reserve them first")
        self.checked = new

    def advance(self, n: int) -> None:
        for row, (slot, active) in enumerate(zip(self.slot_ids, self.active, strict=True)):
            if active:
                self.slot_cache.lengths[slot] += n if self.sizes is None else self.sizes[row]


class SlotLayerCache:
    """One layer of a ``SlotView``: ``update`` writes each row's new keys/values at that row's length (in its blocks)
    and returns every row's keys/values up to the longest, ``(rows, heads, length + new, head_dim)``, gathered from
    the blocks; a row's positions past its own length hold nothing it may attend to (its attention mask says so)."""

    def __init__(self, view: SlotView, layer: int):
        self.cache = view
        self.layer = layer

    @property
    def length(self) -> int:
        """The positions the longest row already holds: the offset of the new queries in the keys returned."""
        return self.cache.length

    def update(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        view, new = self.cache, keys.size(2)
        view.check_room(new)
        block, table = view.slot_cache.block, view.device_table
        pool_keys, pool_values = (
            view.slot_cache.keys[self.layer],
            view.slot_cache.values[self.layer],
        )  # (blocks, heads, block, d)
        if keys.dtype != pool_keys.dtype:  # a pool kept in less than the model's precision (cache_dtype): rounded
            keys, values = keys.to(pool_keys.dtype), values.to(pool_values.dtype)
        if new == 1:  # decoding: row r writes at position row_lengths[r]
            blocks = table[view.rows, view.write_at // block]
            pool_keys[blocks, :, view.write_at % block] = keys[:, :, 0]
            pool_values[blocks, :, view.write_at % block] = values[:, :, 0]
        else:  # a prompt: rows of one length only (the causal mask counts from the longest row)
            if len(set(view.row_lengths)) > 1:
                raise ValueError("several new positions at once need rows of equal length; run prompts one by one")
            positions = torch.arange(view.length, view.length + new, device=table.device)
            blocks = table[:, positions // block]  # (rows, new)
            pool_keys[blocks, :, positions % block] = keys.transpose(1, 2)
            pool_values[blocks, :, positions % block] = values.transpose(1, 2)
        end = view.length + new
        used = table[:, : view.slot_cache.blocks_for(end)]  # (rows, n): the blocks holding positions 0..end-1
        rows, n = used.shape
        heads, head_dim = pool_keys.size(1), pool_keys.size(3)

        def gather(pool: torch.Tensor) -> torch.Tensor:  # (rows, n, heads, block, d) -> (rows, heads, end, d)
            return pool[used].transpose(1, 2).reshape(rows, heads, n * block, head_dim)[:, :, :end]

        return gather(pool_keys), gather(pool_values)


class BeamBlocks:
    """Beam search's rows as the slots of a ``SlotCache`` (blocks of ``block`` positions): between steps each row
    takes its parent's history (``reorder``) by sharing the parent's blocks, not by copying its keys and values. The
    full blocks are never written again; a partly filled last block that several rows now hold (a parent with several
    children) is copied for all but one of them — a few positions a row, where ``KVCache.reorder`` copies whole
    histories. ``step_view(n)`` reserves the next ``n`` positions of every row and returns the view a step runs on
    (the fused CPU step reads the blocks in place; the modules gather them).

    Every row holds the same length, so the rows' blocks are one table, ``table`` ``(rows, blocks a row)``, kept as
    a tensor and reordered as one (a block's holders are counted when blocks are needed, never one by one); each
    step's view takes the table as it is (the pool's own per-slot tables and counts are not used). Blocks of 8
    positions: each reorder copies about half a block for a row whose parent has several children, so smaller
    blocks copy less (the README's translation section has the measurements of 4, 8 and 16)."""

    def __init__(self, num_layers: int, rows: int, num_heads: int, max_length: int, head_dim: int,
                 dtype=torch.float32, device=None, block: int = 8):  # fmt: skip
        blocks = rows * (-(-max_length // block) + 1)  # every row's whole table, and a copy of a last block each
        # every row holds the same length: no row reads a position it has not written, so the pool is not cleared
        self.slots = SlotCache(num_layers, rows, num_heads, max_length, head_dim, dtype, device, blocks, block, False)
        self.rows = list(range(rows))
        self.table = torch.zeros(rows, 0, dtype=torch.long)  # row r's blocks, in order of position

    @property
    def length(self) -> int:
        """The positions every row holds (beam search's rows advance together)."""
        return self.slots.lengths[0]

    @property
    def used_blocks(self) -> int:
        """The pool's blocks that some row holds."""
        return int(self.table.unique().numel())

    def _free(self, n: int) -> torch.Tensor:
        """``n`` blocks no row holds, lowest first (block 0, the null block, never)."""
        held = torch.bincount(self.table.flatten(), minlength=self.slots.blocks + 1)
        free = (held[1:] == 0).nonzero().squeeze(1)[:n] + 1
        if free.numel() < n:
            raise OutOfBlocks(f"all {self.slots.blocks} key/value blocks are in use")
        return free

    def step_view(self, new: int) -> SlotView:
        """Every row with room for its next ``new`` positions (a fresh block where one is full), as one view."""
        needed = self.slots.blocks_for(self.length + new) - self.table.size(1)
        if self.length + new > self.slots.max_length:
            raise ValueError(f"the key/value cache holds {self.slots.max_length} positions per slot, not "
                             f"{self.length + new}")  # fmt: skip
        if needed > 0:
            fresh = self._free(needed * len(self.rows)).view(len(self.rows), needed)
            self.table = torch.cat([self.table, fresh], dim=1)
        return SlotView(self.slots, self.rows, table=self.table)

    def reorder(self, batch_index: torch.Tensor) -> None:
        """Row r takes row ``batch_index[r]``'s history (``KVCache.reorder``'s contract)."""
        self.table = self.table[batch_index.cpu()]
        rest, last = self.length % self.slots.block, self.length // self.slots.block
        if not rest:  # the next position starts a new block: nothing shared is written
            return
        blocks, order = self.table[:, last].sort(stable=True)  # a shared partly filled block: a copy for each of its
        copied = order[1:][blocks[1:] == blocks[:-1]]  # holders but the first
        if copied.numel():
            sources, targets = self.table[copied, last], self._free(copied.numel())
            self.table[copied, last] = targets
            for pool in (self.slots.keys, self.slots.values):
                pool[:, targets, :, :rest] = pool[:, sources, :, :rest]
