"""The serving cache (paged): rows of different lengths decoded together give each row's own one-at-a-time result;
blocks are taken as rows grow, shared by reference, given back when the last holder lets go."""

import pytest
import torch

from glassformer import GPT, GPTConfig
from glassformer.nn.slot_cache import OutOfBlocks, SlotCache

VARIANTS = {
    "gpt2": dict(),
    "llama": dict(positional="rope", norm="rmsnorm", gated_ffn=True, activation="silu", num_kv_heads=1, bias=False),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rows_of_different_lengths_decode_together_as_they_would_alone(variant):
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=50, max_seq_length=40, d_model=32, num_layers=2, num_heads=4, d_ff=64, **VARIANTS[variant]
    )
    model = GPT(config).eval()
    prompts = [torch.randint(0, 50, (n,)) for n in (5, 9, 2)]
    steps = 6
    # alone: the usual cache, one sequence at a time, greedy
    expected = [model.generate(p[None], max_new_tokens=steps)[0, len(p) :] for p in prompts]
    # together: slot 1 stays free (it rides along masked), slots 0, 2 and 3 hold the prompts, in blocks of 4
    # positions taken as they grow (a pool of 12 blocks, fewer than 4 slots of 40 positions would need)
    cache = model.make_slot_cache(4, 40, blocks=12, block=4)
    slots = [0, 2, 3]
    tokens = {}
    with torch.no_grad():
        for slot, prompt in zip(slots, prompts, strict=True):
            cache.reserve(slot, len(prompt))
            logits = model(prompt[None], cache=cache.view([slot]), last_token_only=True)
            tokens[slot] = [int(logits[0, -1].argmax())]
        for _ in range(steps - 1):
            for s in slots:
                cache.reserve(s, cache.lengths[s] + 1)
            view = cache.view(range(4), active=[True, False, True, True])
            ids = torch.tensor([[tokens[s][-1] if s in tokens else 0] for s in range(4)])
            logits = model(ids, attention_mask=view.attention_mask(1), cache=view, last_token_only=True)
            for s in slots:
                tokens[s].append(int(logits[s, -1].argmax()))
    assert [tokens[s] for s in slots] == [e.tolist() for e in expected]
    assert cache.lengths == [5 + steps - 1, 0, 9 + steps - 1, 2 + steps - 1]
    assert [len(t) for t in cache.tables] == [3, 0, 4, 2] and cache.used_blocks == 9  # ceil(length / 4) each
    blocks = [b for t in cache.tables for b in t]
    assert len(set(blocks)) == 9 and 0 not in blocks  # no block held twice; block 0 is the null block


def test_logits_of_a_batched_step_equal_the_single_row_step():
    torch.manual_seed(1)
    config = GPTConfig(vocab_size=30, max_seq_length=32, d_model=16, num_layers=2, num_heads=2, d_ff=32)
    model = GPT(config).eval()
    a, b = torch.randint(0, 30, (1, 7)), torch.randint(0, 30, (1, 3))
    together, alone = model.make_slot_cache(2, 32, block=4), model.make_slot_cache(1, 32)
    for cache, lengths in ((together, (8, 4)), (alone, (8,))):
        for slot, length in enumerate(lengths):
            cache.reserve(slot, length)
    together.free_blocks.reverse()  # blocks handed out out of order: a row's table need not be ascending
    with torch.no_grad():
        model(a, cache=together.view([0]))
        model(b, cache=together.view([1]))
        model(a, cache=alone.view([0]))
        view = together.view([1, 0])  # any slots, in any order
        both = model(torch.tensor([[5], [4]]), attention_mask=view.attention_mask(1), cache=view)
        single = model(torch.tensor([[4]]), cache=alone.view([0]))
    torch.testing.assert_close(both[1], single[0], atol=1e-5, rtol=1e-5)


def test_a_slot_refuses_positions_past_its_length_or_its_blocks():
    cache = SlotCache(num_layers=1, slots=2, num_heads=1, max_length=4, head_dim=2, block=2)
    layer = cache.view([0]).layer(0)
    with pytest.raises(ValueError, match="holds 4 positions per slot"):
        layer.update(torch.zeros(1, 1, 5, 2), torch.zeros(1, 1, 5, 2))
    with pytest.raises(ValueError, match="past its blocks; reserve them first"):
        layer.update(torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2))
    with pytest.raises(ValueError, match="are not distinct slots of the cache's 2"):
        cache.view([1, 2])
    with pytest.raises(ValueError, match="are not distinct slots"):
        cache.view([1, 1])
    with pytest.raises(ValueError, match="positions per slot, not 5"):
        cache.reserve(0, 5)
    cache.reserve(0, 4), cache.reserve(1, 4)
    cache.lengths[:] = [1, 2]
    with pytest.raises(ValueError, match="rows of equal length"):
        cache.view([0, 1]).layer(0).update(torch.zeros(2, 1, 2, 2), torch.zeros(2, 1, 2, 2))


def test_blocks_are_taken_shared_and_given_back_by_reference_count():
    cache = SlotCache(num_layers=1, slots=3, num_heads=1, max_length=8, head_dim=1, blocks=5, block=2)
    cache.reserve(0, 5)  # 3 blocks
    table = list(cache.tables[0])
    for block, position in zip(table, (0, 2, 4), strict=True):
        cache.keys[0, block, 0, :, 0] = torch.tensor([position, position + 1.0])
    cache.lengths[0] = 5
    cache.copy(0, 1, 5)  # slot 1: the two full blocks shared, the half-filled third copied into a block of its own
    assert cache.tables[1][:2] == table[:2] and cache.tables[1][2] not in table
    assert cache.keys[0, cache.tables[1][2], 0, 0, 0] == 4.0 and cache.lengths[1] == 5
    assert [cache.refs[b] for b in table] == [2, 2, 1] and cache.used_blocks == 4
    with pytest.raises(OutOfBlocks, match="all 5 key/value blocks are in use"):
        cache.reserve(2, 4)  # one block left, two wanted: it keeps the one it got
    assert len(cache.tables[2]) == 1 and not cache.free_blocks
    cache.free(0)  # its third block is free; the shared two still held by slot 1
    assert [cache.refs[b] for b in table] == [1, 1, 0] and cache.free_blocks == [table[2]]
    cache.free(1), cache.free(2)
    assert cache.used_blocks == 0 and sorted(cache.free_blocks) == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="slot 0 holds 0 positions, not 3"):
        cache.copy(0, 1, 3)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_prompts_of_different_lengths_read_together_right_padded_give_their_own_logits(variant):
    """A batch of prompts padded on the right (``sizes``, ``logits_at``): each row's logits at its last token and
    the keys and values it leaves are those of the prompt read alone — the next token decoded after it agrees."""
    torch.manual_seed(2)
    config = GPTConfig(
        vocab_size=50, max_seq_length=40, d_model=32, num_layers=2, num_heads=4, d_ff=64, **VARIANTS[variant]
    )
    model = GPT(config).eval()
    prompts = [torch.randint(0, 50, (n,)).tolist() for n in (5, 11, 2)]
    width, sizes = 11, [5, 11, 2]
    together = model.make_slot_cache(3, 40, block=4)
    with torch.no_grad():
        for slot in range(3):
            together.reserve(slot, width + 1)
        view = together.view([2, 0, 1], sizes=sizes)  # slot 2 reads prompt 0, slot 0 prompt 1, slot 1 prompt 2
        ids = torch.tensor([p + [0] * (width - len(p)) for p in prompts])
        batch = model(ids, attention_mask=view.attention_mask(width), cache=view, logits_at=torch.tensor(sizes) - 1)
        assert [together.lengths[s] for s in (2, 0, 1)] == sizes
        step = together.view([2, 0, 1])
        after = model(torch.tensor([[7], [8], [9]]), attention_mask=step.attention_mask(1), cache=step)
        for row, prompt in enumerate(prompts):
            cache = model.make_cache(1, 40)
            alone = model(torch.tensor([prompt]), cache=cache, last_token_only=True)
            torch.testing.assert_close(batch[row], alone[0], atol=1e-5, rtol=1e-5)
            next_alone = model(torch.tensor([[7 + row]]), cache=cache)
            torch.testing.assert_close(after[row], next_alone[0], atol=1e-5, rtol=1e-5)


def test_beams_sharing_their_parents_blocks_hold_what_copied_histories_hold():
    """``BeamBlocks`` against ``KVCache`` (the reference, which copies each changed row's history): random new keys
    and values a step, random parents between steps (duplicates, swaps, rows kept) — every row's positions the same
    in both after each step, and blocks given back (a row's blocks at most its table plus one copy)."""
    from glassformer.nn.cache import KVCache
    from glassformer.nn.slot_cache import BeamBlocks

    generator = torch.Generator().manual_seed(0)
    layers, rows, heads, length, dim = 2, 6, 2, 23, 8
    beams, reference = BeamBlocks(layers, rows, heads, length, dim, block=4), KVCache(layers, rows, heads, length, dim)
    for step in range(length):
        new = [torch.randn(2, rows, heads, 1, dim, generator=generator) for _ in range(layers)]
        view = beams.step_view(1)
        for layer in range(layers):
            view.layer(layer).update(*new[layer])
            reference.layer(layer).update(*new[layer])
        view.advance(1)
        reference.advance(1)
        tables = beams.table  # (rows, blocks): every row's positions gathered from the pool
        for pool, expected in ((beams.slots.keys, reference.keys), (beams.slots.values, reference.values)):
            held = pool[:, tables].transpose(2, 3).flatten(3, 4)[..., : step + 1, :]
            assert torch.equal(held, expected[:, :, :, : step + 1]), step
        assert beams.used_blocks <= rows * (step // 4 + 2)
        parents = torch.randint(0, rows, (rows,), generator=generator)
        beams.reorder(parents)
        reference.reorder(parents)
        if beams.length % 4:  # the next position is written into each row's last block: one row's alone
            assert beams.table[:, -1].unique().numel() == rows
        assert beams.table.max() <= beams.slots.blocks and beams.table.min() >= 1  # never the null block


@pytest.mark.parametrize("activations", [None, "bf16"])
def test_the_server_s_memory_plan_counts_the_cache_it_makes(activations):
    """``memory_plan``'s key/value cache is the bytes of the slot cache the scheduler makes (its default blocks) —
    half of float32's where the model keeps bfloat16 (quantized with bfloat16 activations: ``cache_dtype``)."""
    from glassformer.nn.slot_cache import default_blocks
    from glassformer.serving.loading import memory_plan

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, max_seq_length=128, d_model=32, num_layers=2, num_heads=4, d_ff=64)).eval()
    model.quantize("int8", activations=activations)
    plan = memory_plan(model, max_batch=3, max_context=96, resident=0)
    made = model.make_slot_cache(3, 96, blocks=default_blocks(3, 96))  # what the scheduler makes (scheduler.py)
    assert made.keys.dtype == (torch.bfloat16 if activations else torch.float32)
    assert plan["cache"] == made.nbytes and plan["blocks"] == made.blocks
