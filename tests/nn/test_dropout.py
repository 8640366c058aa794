import pytest
import torch

from glassformer.nn.dropout import Dropout, dropout


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_drops_at_rate_p_and_keeps_the_mean(p):
    torch.manual_seed(0)
    x = torch.ones(400_000)
    y = dropout(x, p)
    assert (y == 0).float().mean().item() == pytest.approx(p, abs=0.005)
    assert torch.all((y == 0) | torch.isclose(y, torch.tensor(1 / (1 - p))))
    assert y.mean().item() == pytest.approx(1.0, abs=0.01)


def test_gradient_is_the_scaled_mask():
    x = torch.randn(1000, requires_grad=True)
    y = dropout(x, 0.3)
    y.sum().backward()
    kept = y != 0
    torch.testing.assert_close(x.grad[kept], torch.full_like(x.grad[kept], 1 / 0.7))
    assert torch.all(x.grad[~kept] == 0)


def test_eval_p0_p1_seed_and_dtype():
    x = torch.randn(50)
    module = Dropout(0.5).eval()
    assert module(x) is x
    assert dropout(x, 0.0) is x and torch.all(dropout(x, 1.0) == 0)
    torch.manual_seed(3)
    a = dropout(x, 0.5)
    torch.manual_seed(3)
    assert torch.equal(a, dropout(x, 0.5))
    assert dropout(x.bfloat16(), 0.5).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="probability"):
        Dropout(1.5)


@pytest.mark.parametrize("shape", [(400_000,), (7, 9, 11)])
def test_every_word_of_a_random_draw_drops_at_rate_p(shape):
    """Four mask entries come from one 64-bit draw: each of the four positions must drop at rate p (the draw's
    top bit is always 0, so an unmasked top word would never drop), and neighbours must be independent."""
    torch.manual_seed(1)
    x = torch.ones(400_000 * 4)
    dropped = (dropout(x, 0.5) == 0).view(-1, 4).float()
    for position in range(4):
        assert dropped[:, position].mean().item() == pytest.approx(0.5, abs=0.005)
    both = (dropped[:, 0] * dropped[:, 1]).mean().item()
    assert both == pytest.approx(0.25, abs=0.005)
    odd = torch.ones(shape)
    assert dropout(odd, 0.3).shape == odd.shape
