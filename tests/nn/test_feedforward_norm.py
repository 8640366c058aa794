import pytest
import torch
import torch.nn.functional as F

from glassformer.nn import LayerNorm, PositionWiseFeedForward, guide_layer_norm, layer_norm_reference


def test_guide_ffn_example():
    ffn = PositionWiseFeedForward(4, 2)
    w1 = torch.tensor([[0.1, 0.2], [-0.1, 0.1], [0.3, -0.2], [0.2, 0.1]])
    w2 = torch.tensor([[1.0, -0.5, 0.8, 0.2], [0.5, 0.3, -0.2, 0.4]])
    with torch.no_grad():  # nn.Linear stores W transposed: y = x Wᵀ + b
        ffn.fc1.weight.copy_(w1.T)
        ffn.fc1.bias.copy_(torch.tensor([0.01, 0.02]))
        ffn.fc2.weight.copy_(w2.T)
        ffn.fc2.bias.copy_(torch.tensor([0.03, -0.01, 0.02, 0.01]))
    out = ffn(torch.tensor([0.5, -0.2, 0.1, 0.8]))
    torch.testing.assert_close(out, torch.tensor([0.38, -0.097, 0.204, 0.128]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh"])
def test_ffn_formula(activation):
    ffn = PositionWiseFeedForward(6, 10, activation)
    x = torch.randn(2, 3, 6)
    act = {"relu": F.relu, "gelu": F.gelu, "gelu_tanh": lambda h: F.gelu(h, approximate="tanh")}[activation]
    expected = act(x @ ffn.fc1.weight.T + ffn.fc1.bias) @ ffn.fc2.weight.T + ffn.fc2.bias
    torch.testing.assert_close(ffn(x), expected)


def test_unknown_activation():
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        PositionWiseFeedForward(4, 8, "swish")


def test_layer_norm_standard_formula():
    x = torch.tensor([2.0, -1.0, 3.0, 0.0])
    norm = LayerNorm(4)
    torch.testing.assert_close(norm(x), torch.tensor([0.6325, -1.2649, 1.2649, -0.6325]), atol=1e-4, rtol=0)


def test_layer_norm_matches_reference_and_torch():
    norm = LayerNorm(16, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(3, 5, 16) * 4 + 2
    torch.testing.assert_close(norm(x), layer_norm_reference(x, norm.weight, norm.bias, 1e-6))
    torch_norm = torch.nn.LayerNorm(16, eps=1e-6)
    torch_norm.load_state_dict(norm.state_dict())
    torch.testing.assert_close(norm(x), torch_norm(x))


def test_guide_teaching_layer_norm_variant():
    x = torch.tensor([2.0, -1.0, 3.0, 0.0])
    out = guide_layer_norm(x, torch.ones(4), torch.zeros(4), eps=1e-5)
    torch.testing.assert_close(out, torch.tensor([0.5477, -1.0954, 1.0954, -0.5477]), atol=1e-4, rtol=0)
    assert not torch.allclose(out, LayerNorm(4)(x), atol=1e-2)  # it is not the model's layer norm
