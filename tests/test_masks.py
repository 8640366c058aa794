import pytest
import torch

from glassformer.masks import causal_mask, decoder_self_attention_mask, padding_mask


def test_padding_mask_true_at_real_tokens():
    src = torch.tensor([[1, 2, 3, 0, 0], [4, 5, 0, 0, 0]])
    mask = padding_mask(src, 0)
    assert mask.shape == (2, 1, 1, 5) and mask.dtype == torch.bool
    assert mask[0, 0, 0].tolist() == [True, True, True, False, False]


def test_causal_mask_allows_past_and_present_only():
    mask = causal_mask(4)
    assert mask.dtype == torch.bool
    assert mask.tolist() == [
        [True, False, False, False],
        [True, True, False, False],
        [True, True, True, False],
        [True, True, True, True],
    ]


def test_decoder_mask_is_causal_and_padding():
    """The guide's printed target mask for [1, 2, 3, 4, 0] allowed the future and hid the past; ours is the
    transpose of that picture for real tokens and blocks the padding column."""
    tgt = torch.tensor([[1, 2, 3, 4, 0], [5, 6, 0, 0, 0]])
    mask = decoder_self_attention_mask(tgt, 0)
    assert mask.shape == (2, 1, 5, 5)
    assert mask[0, 0].int().tolist() == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 1, 1, 0],
    ]


def test_mask_errors():
    with pytest.raises(ValueError, match=r"\(batch, seq\)"):
        padding_mask(torch.tensor([1, 2, 0]), 0)
    with pytest.raises(ValueError, match="at least 1"):
        causal_mask(0)


def test_causal_mask_after_cached_positions_is_the_last_rows_of_the_whole_one():
    """With 3 positions cached, 2 new queries see the cache and the new keys up to their own: the last 2 rows of
    the 5-position mask, the mask every cached forward pass (GPT, the seq2seq decoder) builds."""
    expected = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(causal_mask(2, past=3), expected) and torch.equal(causal_mask(5)[3:], expected)
    with pytest.raises(ValueError, match="past of at least 0"):
        causal_mask(2, past=-1)
