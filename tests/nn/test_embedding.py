import math

import pytest
import torch

from glassformer.nn import LearnedPositionalEmbedding, PositionalEncoding, TokenEmbedding, sinusoidal_encoding

GUIDE_E = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9], [1.0, 1.1, 1.2], [1.3, 1.4, 1.5]])


def test_embedding_lookup_of_guide_table():
    emb = TokenEmbedding(5, 3, scale=False)
    with torch.no_grad():
        emb.weight.copy_(GUIDE_E)
    torch.testing.assert_close(emb(torch.tensor([[2]]))[0, 0], torch.tensor([0.7, 0.8, 0.9]))


def test_embedding_scaled_by_sqrt_d_model():
    emb = TokenEmbedding(5, 3)
    with torch.no_grad():
        emb.weight.copy_(GUIDE_E)
    torch.testing.assert_close(emb(torch.tensor([[2]]))[0, 0], torch.tensor([0.7, 0.8, 0.9]) * math.sqrt(3))


def test_positional_encoding_paper_formula_not_guide_loop():
    pe = sinusoidal_encoding(3, 300)[2]
    torch.testing.assert_close(pe[2:6], torch.tensor([0.95231, -0.30515, 0.98045, -0.19678]), atol=1e-5, rtol=0)
    torch.testing.assert_close(pe[:2], torch.tensor([math.sin(2), math.cos(2)]))
    # the guide's loop printed these for dims 2..5 (its exponent was doubled):
    assert not torch.allclose(pe[2:6], torch.tensor([0.98045, -0.19678, 0.99998, 0.00634]), atol=1e-3)


def test_positional_encoding_every_entry():
    d = 10
    pe = sinusoidal_encoding(7, d)
    for pos in range(7):
        for i in range(d // 2):
            angle = pos / 10000 ** (2 * i / d)
            assert pe[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_odd_d_model():
    pe = sinusoidal_encoding(4, 5)
    assert pe.shape == (4, 5)
    assert pe[3, 4].item() == pytest.approx(math.sin(3 / 10000 ** (4 / 5)), abs=1e-6)
    out = PositionalEncoding(5, 10)(torch.zeros(2, 4, 5))
    torch.testing.assert_close(out[0], pe)


def test_positional_encoding_adds_to_input_and_is_not_saved():
    module = PositionalEncoding(300)
    x = torch.randn(1, 3, 300)
    torch.testing.assert_close(module(x), x + sinusoidal_encoding(3, 300)[None])
    torch.testing.assert_close(module(x[:, :1], offset=2), x[:, :1] + sinusoidal_encoding(3, 300)[2])
    assert "pe" not in module.state_dict()


@pytest.mark.parametrize("module", [PositionalEncoding(8, 16), LearnedPositionalEmbedding(8, 16)])
def test_max_length_checked(module):
    module(torch.zeros(1, 16, 8))
    with pytest.raises(ValueError, match="max_seq_length is 16"):
        module(torch.zeros(1, 17, 8))
    with pytest.raises(ValueError, match="max_seq_length is 16"):
        module(torch.zeros(1, 2, 8), offset=15)


def test_learned_positions():
    module = LearnedPositionalEmbedding(4, 10)
    x = torch.randn(2, 3, 4)
    torch.testing.assert_close(module(x), x + module.weight[:3])
