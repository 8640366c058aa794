"""The key/value cache's beam-search reorder: each row takes its parent's filled positions, in place."""

import torch

from glassformer.nn.cache import KVCache


def test_reorder_gives_each_row_its_parents_filled_positions():
    torch.manual_seed(0)
    cache = KVCache(2, 6, 3, 10, 4)
    cache.keys.normal_(), cache.values.normal_()
    cache.advance(7)
    before = cache.keys.clone(), cache.values.clone()
    parents = torch.tensor([1, 1, 2, 0, 4, 4])  # a row kept, rows swapped, a row copied twice
    cache.reorder(parents)
    for now, then in zip((cache.keys, cache.values), before, strict=True):
        torch.testing.assert_close(now[:, :, :, :7], then[:, parents, :, :7], rtol=0, atol=0)
        torch.testing.assert_close(now[:, :, :, 7:], then[:, :, :, 7:], rtol=0, atol=0)  # unfilled: not copied
    storage = cache.keys.data_ptr()
    cache.reorder(torch.arange(6))  # every row its own parent: nothing moves
    assert cache.keys.data_ptr() == storage
