import pytest
import torch
import torch.nn.functional as F

from glassformer.nn import linear as linear_module
from glassformer.nn.linear import Linear, linear


@pytest.mark.parametrize("reorder", [True, False])  # the AMX-only reordered products, whatever this CPU has
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 1, 24), (24,), (3, 24), (2, 4, 24), (17, 24), (64, 24)])
@pytest.mark.parametrize("bias", [True, False])
def test_fast_path_equals_reference(dtype, shape, bias, reorder, monkeypatch):
    monkeypatch.setattr(linear_module, "REORDER_HALF_PRECISION", reorder)
    torch.manual_seed(0)
    weight = torch.randn(40, 24).to(dtype)
    b = torch.randn(40).to(dtype) if bias else None
    x = torch.randn(shape).to(dtype)
    with torch.no_grad():
        fast = linear(x, weight, b)
    reference = F.linear(x.float(), weight.float(), None if b is None else b.float())
    assert fast.shape == (*shape[:-1], 40) and fast.dtype == dtype
    tolerance = 1e-5 if dtype == torch.float32 else 0.1
    torch.testing.assert_close(fast.float(), reference, atol=tolerance, rtol=0.02 if tolerance > 1e-5 else 0)


def test_gradients_take_the_reference_path():
    layer = Linear(8, 4)
    x = torch.randn(1, 8, requires_grad=True)
    layer(x).sum().backward()
    torch.testing.assert_close(x.grad, layer.weight.sum(0, keepdim=True))


def test_is_a_torch_linear():
    layer = Linear(3, 2)
    assert isinstance(layer, torch.nn.Linear) and set(layer.state_dict()) == {"weight", "bias"}


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="oneDNN is not available in this torch build")
@pytest.mark.parametrize("rows", [1, 2, 8, 64, 65])
@pytest.mark.parametrize("amx", [True, False])  # which dtypes pack depends on the CPU; test both choices
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_weights_equal_reference(rows, amx, dtype, monkeypatch):
    from glassformer.nn.linear import packed_weights

    monkeypatch.setattr(linear_module, "REORDER_HALF_PRECISION", amx)
    monkeypatch.setattr(linear_module, "MIN_PACKED_ROWS", 2 if amx else 1)
    model = torch.nn.Sequential(Linear(24, 40), torch.nn.ReLU(), Linear(40, 8, bias=False)).to(dtype)
    x = torch.randn(rows, 1, 24).to(dtype)
    with torch.no_grad():
        expected = torch.nn.functional.linear(
            torch.relu(torch.nn.functional.linear(x, *model[0].parameters())), model[2].weight
        )
        with packed_weights(model):
            packs = dtype == torch.float32 or not amx
            assert (model[0].packed_weight is not None) == packs and (model[2].packed_weight is not None) == packs
            packed = model(x)
    assert model[0].packed_weight is None  # dropped on exit
    tolerance = dict(atol=1e-5, rtol=0) if dtype == torch.float32 else dict(atol=0.05, rtol=0.02)
    torch.testing.assert_close(packed, expected, **tolerance)


def test_packed_weights_are_not_used_for_training():
    from glassformer.nn.linear import packed_weights

    layer = Linear(6, 3)
    x = torch.randn(4, 6, requires_grad=True)
    with packed_weights(layer):
        layer(x).sum().backward()
    torch.testing.assert_close(x.grad, layer.weight.sum(0).expand(4, 6))


@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh", "silu"])
@pytest.mark.parametrize("rows", [1, 3, 300])
def test_activation_is_applied_with_and_without_packed_weights(activation, rows):
    from glassformer.nn.activation import ACTIVATIONS
    from glassformer.nn.linear import packed_weights

    layer = Linear(16, 48, activation=activation)
    x = torch.randn(rows, 16)
    with torch.no_grad():
        expected = ACTIVATIONS[activation](torch.nn.functional.linear(x, layer.weight, layer.bias))
        torch.testing.assert_close(layer(x), expected)
        if torch.backends.mkldnn.is_available():
            with packed_weights(layer):
                assert layer.uses_packed_weight(x) == (rows >= linear_module.MIN_PACKED_ROWS)
                torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="unknown activation"):
        Linear(2, 2, activation="swish")


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="oneDNN is not available in this torch build")
@pytest.mark.parametrize("activation", ["gelu_tanh", "silu"])
def test_half_precision_packed_weights_apply_the_activation_apart(activation):
    from glassformer.nn.activation import ACTIVATIONS
    from glassformer.nn.linear import can_pack, packed_weights

    layer = Linear(64, 96, activation=activation).to(torch.bfloat16)
    x = torch.randn(4, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        expected = ACTIVATIONS[activation](torch.nn.functional.linear(x, layer.weight, layer.bias))
        with packed_weights(layer):
            assert layer.uses_packed_weight(x) == can_pack(layer)
            torch.testing.assert_close(layer(x), expected)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="oneDNN is not available in this torch build")
def test_packed_weights_leave_autocast_to_f_linear():
    """Under autocast the packed float32 kernel would bypass the bfloat16 compute autocast asks for."""
    from glassformer.nn.linear import packed_weights

    layer = Linear(16, 8, activation="gelu")
    x = torch.randn(300, 16)
    with torch.no_grad(), packed_weights(layer):
        assert layer.uses_packed_weight(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not layer.uses_packed_weight(x)
            assert layer(x).dtype == torch.bfloat16
