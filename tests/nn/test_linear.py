import pytest
import torch
import torch.nn.functional as F

from glassformer.backends import kernels
from glassformer.backends.cpu import onednn
from glassformer.nn.linear import Linear, can_pack, linear, packed_weights

pytestmark = pytest.mark.cpu_class  # the kernels and precisions chosen depend on the CPU class


def needs_packing(dtype: torch.dtype) -> None:
    """Skip, naming the reason, where this CPU cannot pack ``dtype`` weights (the probe's verdict)."""
    name = {torch.float32: "onednn_packed_fp32", torch.bfloat16: "onednn_packed_bf16"}[dtype]
    if not kernels.kernel_works(name):
        pytest.skip(f"oneDNN cannot pack {dtype} weights on this CPU: {kernels.kernel_status(name)}")


@pytest.fixture
def restore_kernels():
    """Tests that break a kernel on purpose: probes and switches are back as they were afterwards."""
    saved = dict(kernels._disabled)
    yield
    kernels._disabled.clear()
    kernels._disabled.update(saved)
    kernels._probe.cache_clear()


@pytest.mark.parametrize("reorder", [True, False])  # the AMX-only reordered products, whatever this CPU has
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 1, 24), (24,), (3, 24), (2, 4, 24), (17, 24), (64, 24)])
@pytest.mark.parametrize("bias", [True, False])
def test_fast_path_equals_reference(dtype, shape, bias, reorder, monkeypatch):
    monkeypatch.setattr(onednn, "reorder_half_precision", lambda: reorder)
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


@pytest.mark.parametrize("rows", [1, 2, 8, 64, 65])
@pytest.mark.parametrize("amx", [True, False])  # which dtypes pack depends on the CPU; test both choices
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_weights_equal_reference(rows, amx, dtype, monkeypatch):
    if dtype == torch.float32 or not amx:  # these cases pack: only where the CPU can
        needs_packing(dtype)
    monkeypatch.setattr(onednn, "reorder_half_precision", lambda: amx)
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
    assert (model[0].packed_weight is not None) == packs  # kept after the block: packed once per model
    tolerance = dict(atol=1e-5, rtol=0) if dtype == torch.float32 else dict(atol=0.05, rtol=0.02)
    torch.testing.assert_close(packed, expected, **tolerance)


def test_packed_weights_are_not_used_for_training():
    layer = Linear(6, 3)
    x = torch.randn(4, 6, requires_grad=True)
    with packed_weights(layer):
        layer(x).sum().backward()
    torch.testing.assert_close(x.grad, layer.weight.sum(0).expand(4, 6))


@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh", "silu"])
@pytest.mark.parametrize("rows", [1, 3, 300])
def test_activation_is_applied_with_and_without_packed_weights(activation, rows):
    from glassformer.nn.activation import ACTIVATIONS

    layer = Linear(16, 48, activation=activation)
    x = torch.randn(rows, 16)
    with torch.no_grad():
        expected = ACTIVATIONS[activation](torch.nn.functional.linear(x, layer.weight, layer.bias))
        torch.testing.assert_close(layer(x), expected)
        if onednn.packs(torch.float32):
            with packed_weights(layer):
                assert layer.uses_packed_weight(x) == (rows >= onednn.min_packed_rows())
                torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="unknown activation"):
        Linear(2, 2, activation="swish")


@pytest.mark.parametrize("activation", ["gelu_tanh", "silu"])
def test_half_precision_packed_weights_apply_the_activation_apart(activation, monkeypatch):
    from glassformer.nn.activation import ACTIVATIONS

    needs_packing(torch.bfloat16)
    monkeypatch.setattr(onednn, "reorder_half_precision", lambda: False)  # bfloat16 packs (as without AMX)
    layer = Linear(64, 96, activation=activation).to(torch.bfloat16)
    x = torch.randn(4, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        expected = ACTIVATIONS[activation](torch.nn.functional.linear(x, layer.weight, layer.bias))
        with packed_weights(layer):
            assert can_pack(layer) and layer.uses_packed_weight(x)
            torch.testing.assert_close(layer(x), expected)


def test_packed_weights_leave_autocast_to_f_linear():
    """Under autocast the packed float32 kernel would bypass the bfloat16 compute autocast asks for."""
    needs_packing(torch.float32)
    layer = Linear(16, 8, activation="gelu")
    x = torch.randn(300, 16)
    with torch.no_grad(), packed_weights(layer):
        assert layer.uses_packed_weight(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not layer.uses_packed_weight(x)
            assert layer(x).dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_failing_probe_leaves_the_plain_path(dtype, monkeypatch, restore_kernels):
    """A CPU whose oneDNN cannot pack (simulated: the probe raises, as bfloat16 packing does on AVX2-only CPUs)
    packs nothing, and every call gives F.linear's result."""
    name = {torch.float32: "onednn_packed_fp32", torch.bfloat16: "onednn_packed_bf16"}[dtype]

    def broken():
        raise RuntimeError("mkldnn_reorder_linear_weight: simulated missing CPU support")

    monkeypatch.setitem(kernels.KERNELS, name, broken)
    kernels._probe.cache_clear()
    monkeypatch.setattr(onednn, "reorder_half_precision", lambda: False)
    assert not kernels.kernel_works(name) and "simulated" in kernels.kernel_status(name)
    layer = Linear(16, 8, activation="relu").to(dtype)
    x = torch.randn(4, 16).to(dtype)
    with torch.no_grad(), packed_weights(layer):
        assert not can_pack(layer) and layer.packed_weight is None
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias).relu())


def test_a_kernel_failing_at_run_time_is_switched_off(monkeypatch, restore_kernels):
    """The probe passed but a call fails (a shape the probe did not try): that call and every later one take the
    plain path, and ``glassformer env`` says why."""
    needs_packing(torch.float32)

    def broken(self, x):
        raise RuntimeError("could not create a primitive")

    monkeypatch.setattr(Linear, "_packed_forward", broken)
    layer = Linear(16, 8)
    x = torch.randn(4, 16)
    with torch.no_grad(), packed_weights(layer):
        assert layer.packed_weight is not None
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
        assert layer.packed_weight is None
    assert not kernels.kernel_works("onednn_packed_fp32")
    assert "could not create a primitive" in kernels.kernel_status("onednn_packed_fp32")
    with torch.no_grad(), packed_weights(layer):
        assert layer.packed_weight is None  # not packed again in this process


def test_bfloat16_models_run_on_every_cpu():
    """bfloat16 weights work whether or not this CPU packs them (on AVX2-only CPUs the plain path, slowly)."""
    model = torch.nn.Sequential(Linear(16, 32, activation="gelu"), Linear(32, 4)).to(torch.bfloat16)
    x = torch.randn(3, 16, dtype=torch.bfloat16)
    with torch.no_grad(), packed_weights(model):
        y = model(x)
    expected = F.linear(F.gelu(F.linear(x.float(), model[0].weight.float(), model[0].bias.float())),
                        model[1].weight.float(), model[1].bias.float())  # fmt: skip
    torch.testing.assert_close(y.float(), expected, atol=0.05, rtol=0.05)


@pytest.mark.skipif(not can_pack(Linear(4, 4)), reason="this CPU packs no float32 weights")
def test_an_inner_packed_block_leaves_the_outer_one_packed():
    layer = Linear(16, 8)
    with packed_weights(layer):
        outer = layer.packed_weight
        with packed_weights(layer):  # generate() inside a server that holds the model packed
            assert layer.packed_weight is outer  # not packed a second time
        assert layer.packed_weight is outer  # and still packed for the server
    assert layer.packed_weight is outer  # kept: the next generate() does not pack again
    layer.train()
    assert layer.packed_weight is None  # training changes the weight: the copy is dropped


@pytest.mark.parametrize("rows", [1, 3, 4, 70, 300])
@pytest.mark.parametrize("bias", [True, False])
def test_bf16_products_take_four_or_more_rows_in_bfloat16(rows, bias):
    """``bf16_products`` (a float output layer of a model quantized with bfloat16 activations): from 4 rows, where
    the CPU multiplies bfloat16, ``bf16(bf16(x) bf16(W)ᵀ + b)`` (rounded once: a bfloat16 unit apart at most,
    2^-7 of a value); fewer rows, a gradient or a CPU without it keep F.linear in float32. A new weight is rounded
    anew."""
    from glassformer.nn.linear import BF16_MIN_ROWS, bf16_linear_reference

    layer, x = Linear(48, 40, bias=bias), torch.randn(rows, 48) * 3
    layer.bf16_products = True
    bf16 = rows >= BF16_MIN_ROWS and kernels.kernel_works("quantized_native_bf16")
    with torch.no_grad():
        y = layer(x)
        if bf16:
            expected = bf16_linear_reference(x, layer.weight, layer.bias)
            assert y.dtype == torch.float32 and not torch.equal(y, F.linear(x, layer.weight, layer.bias))
            torch.testing.assert_close(y, expected, rtol=2**-7, atol=1e-6)
            layer.weight.mul_(2)
            torch.testing.assert_close(layer(x), bf16_linear_reference(x, layer.weight, layer.bias), rtol=2**-7,
                                       atol=1e-6)  # fmt: skip
        else:
            torch.testing.assert_close(y, F.linear(x, layer.weight, layer.bias), rtol=0, atol=0)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=0, atol=0)  # with a gradient


def test_only_a_model_quantized_with_bf16_activations_gives_its_float_head_bf16_products():
    from glassformer.models.gpt import GPT, GPTConfig

    config = GPTConfig.llama(vocab_size=64, max_seq_length=16, d_model=32, num_layers=1, num_heads=2, d_ff=64,
                             tie_embeddings=False)  # fmt: skip
    assert GPT(config).quantize("int8", activations="bf16").lm_head.bf16_products
    assert not GPT(config).quantize("int8").lm_head.bf16_products
    quantized_head = GPT(config).quantize("int8", embeddings="int8", activations="bf16").lm_head
    assert quantized_head.weight is None and not quantized_head.bf16_products  # its quantized weight takes them
