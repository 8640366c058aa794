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


def test_no_position_is_read_before_it_is_written(nan_caches):
    """A cache's memory is never cleared: greedy decoding of left-padded rows, beam search and translation's beam
    search through the modules give the same tokens from caches that start as NaN."""
    from glassformer.generation.seq2seq import translate_ids
    from glassformer.models.gpt import GPT, GPTConfig
    from glassformer.models.transformer import Transformer, TransformerConfig

    gpt = GPT(GPTConfig(vocab_size=50, max_seq_length=32, d_model=32, num_layers=2, num_heads=4, d_ff=64)).eval()
    translator = Transformer(TransformerConfig(src_vocab_size=50, tgt_vocab_size=50, d_model=32, num_heads=4, d_ff=64,
                                               num_layers=2, max_seq_length=32, dropout=0.0, bos_token_id=1,
                                               eos_token_id=2, pad_token_id=0)).eval()  # fmt: skip
    ids, mask = torch.randint(3, 50, (2, 6)), torch.tensor([[0, 0, 1, 1, 1, 1], [1] * 6])
    src = torch.randint(3, 50, (2, 7))
    src[0, 5:] = 0

    def decode():
        with torch.inference_mode():
            return (
                gpt.generate(ids, attention_mask=mask, max_new_tokens=8).tolist(),
                gpt.generate(ids, attention_mask=mask, max_new_tokens=8, num_beams=3).tolist(),
                translate_ids(translator, src, num_beams=3),
            )

    expected = decode()
    with nan_caches() as made:
        assert decode() == expected
    assert len(made) == 3  # each decoding made its cache from NaN
