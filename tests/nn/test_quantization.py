"""Weight-only quantization: every fast path against the reference (dequantize, then F.linear), the formats
(including GGUF's blocks against the ``gguf`` package's own dequantization), quantized models, their checkpoints,
and the errors for shapes a quantization does not fit."""

import copy
import json

import numpy as np
import pytest
import torch

from glassformer.backends.cpu import onednn
from glassformer.backends.cpu import quantized as cpu_quantized
from glassformer.backends.cpu.quantized import dequantize, dequantize_rows, pack_int4, unpack_int4
from glassformer.backends.kernels import kernel_status, kernel_works
from glassformer.checkpoints.gguf_file import GGUFFile
from glassformer.models.bert import Bert, BertConfig
from glassformer.models.gpt import GPT, GPTConfig
from glassformer.models.quantization import Quantization
from glassformer.models.transformer import Transformer, TransformerConfig
from glassformer.nn import quantization
from glassformer.nn.linear import Linear, packed_weights
from glassformer.nn.quantization import (
    BF16_KERNEL_ROWS,
    KERNEL_ROWS,
    QuantizedWeight,
    bf16_linear_reference,
    check_quantization,
    dynamic_int8_linear_reference,
    quantize_tensor,
    quantized_linear,
    quantized_linear_reference,
)

pytestmark = pytest.mark.cpu_class  # the kernels and precisions chosen depend on the CPU class

CASES = [("int8", None), ("int8", 32), ("int8", 64), ("int4", 32), ("int4", 64), ("int4", 128)]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


def native_linear(x, weight, bias=None, rows=slice(None)):
    """glassformer's operator for ``x`` and the ``rows`` of ``weight``."""
    offsets = None if weight.offsets is None else weight.offsets[rows]
    codes, scales = weight.codes[rows], weight.scales[rows]
    return cpu_quantized.native_linear(x, codes, scales, offsets, weight.group_size, bias)


def torch_linear(x, weight, bias=None):
    return cpu_quantized.torch_linear(
        x, weight.codes, weight.scales, weight.group_size, bias, weight.torch_int4_layout()
    )


def random_weight(kind, group, out_features=40, in_features=256, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return QuantizedWeight.from_float(torch.randn(out_features, in_features, generator=generator), kind, group)


@pytest.mark.parametrize("kind,group", CASES)
@pytest.mark.parametrize("rows", [1, 3, 5, 16, 42])  # decoding, and prompts up to KERNEL_ROWS
@pytest.mark.parametrize("out_features", [1, 7, 40])
def test_native_kernel_matches_the_reference(kind, group, rows, out_features):
    if not kernel_works(f"quantized_native_{kind}"):
        pytest.skip(f"glassformer's kernel is not available here: {kernel_status(f'quantized_native_{kind}')}")
    weight = random_weight(kind, group, out_features)
    x = torch.randn(rows, 256)
    bias = torch.randn(out_features)
    for b in (None, bias):
        assert relative_error(native_linear(x, weight, b), quantized_linear_reference(x, weight, b)) <= 1e-3
    # rows of the weight (one of Q, K, V) and a leading batch shape
    part = slice(out_features // 2, out_features)
    x3 = torch.randn(2, rows, 256)
    expected = quantized_linear_reference(x3, weight, bias[part], part)
    assert relative_error(native_linear(x3, weight, bias[part], part), expected) <= 1e-3


@pytest.mark.parametrize("kind,group", [("int8", None), ("int4", 32), ("int4", 64), ("int4", 128)])
@pytest.mark.parametrize("rows", [1, 5])
def test_torch_kernels_match_the_reference(kind, group, rows):
    if not kernel_works(f"quantized_torch_{kind}"):
        pytest.skip(f"torch's {kind} kernel does not work here: {kernel_status(f'quantized_torch_{kind}')}")
    weight = random_weight(kind, group, out_features=64)
    x = torch.randn(rows, 256)
    expected = quantized_linear_reference(x, weight, torch.ones(64))
    assert relative_error(torch_linear(x, weight, torch.ones(64)), expected) <= 1e-3
    weight.codes.zero_()  # new codes: torch's packed layout is made again
    assert relative_error(torch_linear(x, weight), quantized_linear_reference(x, weight)) <= 1e-3


def test_the_dispatcher_takes_any_input_and_equals_the_reference():
    weight = random_weight("int4", 32)
    for x in (torch.randn(1, 256), torch.randn(40, 256), torch.randn(3, 256).double(), torch.randn(2, 256).bfloat16()):
        expected = quantized_linear_reference(x, weight)
        assert quantized_linear(x, weight).dtype == x.dtype
        tolerance = 2e-2 if x.dtype == torch.bfloat16 else 1e-3
        assert relative_error(quantized_linear(x, weight).float(), expected.float()) <= tolerance


@pytest.mark.parametrize("kind,group", [("int8", None), ("int4", 32)])
def test_many_rows_dequantize_a_tile_at_a_time_never_the_whole_matrix(monkeypatch, kind, group):
    """Past KERNEL_ROWS (a long prompt) the product dequantizes TILE_ELEMENTS weights at a time, and equals the
    reference; Q/K/V rows of a fused projection too; float32 and bfloat16."""
    monkeypatch.setattr(quantization, "TILE_ELEMENTS", 16 * 256)  # 16 rows of 256: 13 tiles for 200 outputs
    weight = QuantizedWeight.from_float(torch.randn(200, 256), kind, group)
    x, bias = torch.randn(3, KERNEL_ROWS + 10, 256), torch.randn(200)
    cases = [(dtype, rows) for dtype in (torch.float32, torch.bfloat16) for rows in (None, slice(40, 150))]
    expected = [quantized_linear_reference(x.to(t), weight, bias[rows or slice(None)], rows) for t, rows in cases]
    tiles = []

    def recording(codes, *args, **kwargs):
        tiles.append(codes.size(0))
        return dequantize_rows(codes, *args, **kwargs)

    monkeypatch.setattr(quantization, "dequantize_rows", recording)
    for (dtype, rows), theirs in zip(cases, expected, strict=True):
        ours = quantized_linear(x.to(dtype), weight, bias[rows or slice(None)], rows)
        assert ours.shape == theirs.shape and ours.dtype == dtype
        assert relative_error(ours.float(), theirs.float()) <= (1e-5 if dtype == torch.float32 else 2e-2)
    assert max(tiles) == 16 and sum(tiles) == 2 * (200 + 110)


@pytest.mark.parametrize("kind,group", CASES)
def test_quantization_error_is_at_most_half_a_step(kind, group):
    w = torch.randn(24, 256)
    codes, scales, offsets = quantize_tensor(w, kind, group)
    g = group or 256
    steps = scales.repeat_interleave(g, dim=1)
    assert torch.all((dequantize(codes, scales, offsets) - w).abs() <= steps / 2 + 1e-6)
    assert codes.dtype == (torch.int8 if kind == "int8" else torch.uint8)


def test_int4_packing_is_llama_cpps_block_layout():
    q = torch.randint(0, 16, (3, 64), dtype=torch.uint8)
    packed = pack_int4(q)
    assert packed.shape == (3, 32)
    assert torch.equal(packed[:, 0] & 15, q[:, 0]) and torch.equal(packed[:, 0] >> 4, q[:, 16])
    assert torch.equal(unpack_int4(packed), q)


def test_constant_groups_come_back_to_half_precision():
    """A group of equal weights: int4 holds the value in its float16 offset (scale 1, codes 0); int8 as 127 steps of
    a float16 scale, within 2^-11 of it."""
    for value in (0.5, 0.1, -3.7):
        w = torch.full((2, 64), value)
        as_half = torch.full_like(w, float(torch.tensor(value).half()))
        assert torch.equal(dequantize(*quantize_tensor(w, "int4", 32)), as_half)
        assert (dequantize(*quantize_tensor(w, "int8", 32)) - w).abs().max() <= abs(value) * 2**-11


@pytest.mark.parametrize(
    "kind,group,in_features,words",
    [
        ("int4", 128, 576, ["group size 128", "in_features=576"]),
        ("int8", 100, 576, ["group size 100", "in_features=576"]),
        ("int4", 48, 96, ["group size 48", "multiples of 32"]),
        ("int3", None, 64, ["int3", "int8, int4"]),
    ],
)
def test_a_shape_the_quantization_does_not_fit_is_one_line_naming_both(kind, group, in_features, words):
    with pytest.raises(ValueError) as error:
        check_quantization(kind, group, in_features)
    assert "\n" not in str(error.value) and all(w in str(error.value) for w in words)


@pytest.mark.parametrize("block_type", ["Q8_0", "Q4_0", "Q4_1"])
def test_gguf_blocks_load_exactly_as_gguf_dequantizes_them(block_type):
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize as gguf_dequantize
    from gguf.quants import quantize

    from glassformer.checkpoints.gguf import blocks_to_quantized

    qtype = GGMLQuantizationType[block_type]
    data = quantize(np.random.default_rng(0).standard_normal((24, 128)).astype(np.float32), qtype)

    class Tensor:  # what GGUFReader gives: raw blocks and their type
        tensor_type = qtype

    Tensor.data = data
    kind, codes, scales, offsets = blocks_to_quantized(Tensor)
    expected = torch.from_numpy(np.array(gguf_dequantize(data, qtype), dtype=np.float32))
    assert kind == ("int8" if block_type == "Q8_0" else "int4")
    assert torch.allclose(dequantize(codes, scales, offsets), expected, atol=1e-6, rtol=0)


def tiny_llama(tie=True):
    torch.manual_seed(0)
    config = GPTConfig.llama(
        vocab_size=96, max_seq_length=64, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=128
    )
    config.tie_embeddings = tie
    return GPT(config).eval()


def test_a_checkpoint_with_float32_scales_loads_into_half_precision(tmp_path):
    """Checkpoints written before scales and offsets became float16 held them in float32: they load, in float16."""
    from safetensors.torch import load_file, save_file

    model = copy.deepcopy(tiny_llama()).quantize("int4", embeddings="int8")
    model.save_pretrained(tmp_path)
    path = next(tmp_path.glob("*.safetensors"))
    tensors = load_file(path)
    save_file({k: v.float() if k.endswith((".scales", ".offsets")) else v for k, v in tensors.items()}, path)
    ids = torch.randint(0, 96, (1, 9))
    with torch.inference_mode():
        reloaded = GPT.from_pretrained(tmp_path)
        assert torch.equal(reloaded(ids), model(ids))
    assert reloaded.layers[0].ffn.fc1.quantized.scales.dtype == torch.float16


@pytest.mark.parametrize("kind,tolerance", [("int8", 0.02), ("int4", 0.15)])
@pytest.mark.parametrize("embeddings", [None, "int8", "int4"])
def test_a_quantized_gpt_stays_close_and_round_trips_through_its_checkpoint(tmp_path, kind, tolerance, embeddings):
    model = tiny_llama()
    ids = torch.randint(0, 96, (2, 12))
    with torch.inference_mode():
        expected = model(ids)
        quantized = copy.deepcopy(model).quantize(kind, embeddings=embeddings)
        logits = quantized(ids)
    assert relative_error(logits, expected) <= (0.15 if embeddings == "int4" else tolerance)
    assert all(m.weight is None for m in quantized.modules() if isinstance(m, Linear) and m is not quantized.lm_head)
    if embeddings is not None:  # the tied output layer is the embedding table: one object, stored once
        assert quantized.lm_head.quantized is quantized.embedding.quantized
    quantized.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["quantization"]["kind"] == kind
    with torch.inference_mode():
        reloaded = GPT.from_pretrained(tmp_path)
        assert torch.equal(reloaded(ids), logits)
        # decoding one token at a time (the kernels' rows) agrees with the whole sequence
        cached = reloaded.generate(ids[:1, :4], max_new_tokens=6, eos_token_id=None)
        assert torch.equal(cached, quantized.generate(ids[:1, :4], max_new_tokens=6, eos_token_id=None))


@pytest.mark.parametrize("kind", ["int8", "int4"])
@pytest.mark.parametrize("embeddings", ["int8", "int4"])
def test_a_quantized_gpt_moved_to_bfloat16_runs_in_bfloat16(kind, embeddings):
    """``.to(torch.bfloat16)`` after quantizing: the quantized embedding's lookups follow the model's dtype (they were
    float32 and broke attention), the kernels take the widened activations and give bfloat16 back; logits within
    bfloat16's rounding of the float32 quantized model's, and generate runs."""
    quantized = copy.deepcopy(tiny_llama()).quantize(kind, embeddings=embeddings)
    ids = torch.randint(0, 96, (2, 12))
    with torch.inference_mode():
        expected = quantized(ids)
        low = copy.deepcopy(quantized).to(torch.bfloat16)
        assert low.embedding(ids).dtype == torch.bfloat16 and low.embedding.quantized.dtype == torch.bfloat16
        logits = low(ids)
        assert logits.dtype == torch.bfloat16 and relative_error(logits.float(), expected) <= 0.03
        out = low.generate(ids[:1, :4], max_new_tokens=6, eos_token_id=None)
    assert out.shape == (1, 10)
    assert low.to(torch.float32).embedding(ids).dtype == torch.float32


def test_quantized_tables_go_back_to_float_when_asked():
    model = tiny_llama().quantize("int8", embeddings="int8")
    model.quantize("int8", embeddings="float")
    assert model.embedding.quantized is None and model.lm_head.weight is model.embedding.weight
    assert model.embedding.weight.dtype == torch.float32


def test_a_group_size_that_does_not_fit_leaves_the_model_untouched():
    model = tiny_llama()
    with pytest.raises(ValueError, match="group size 48"):
        model.quantize("int4", group_size=48)
    assert all(m.quantized is None for m in model.modules() if isinstance(m, Linear))


@pytest.mark.parametrize("kernel", [True, False])
def test_int8_activations_give_their_formula_for_many_rows_and_the_kernel_for_few(kernel, monkeypatch):
    """W8A8: past KERNEL_ROWS rows each row of x is quantized to int8 and multiplied in integers (torch._int_mm), equal
    to its formula whether the kernel works or not, within 8-bit error of float activations; fewer rows keep the
    weight-only kernel's 16-bit activations."""
    if not kernel:
        monkeypatch.setattr(quantization, "kernel_works", lambda name: False)
    generator = torch.Generator().manual_seed(0)
    layer = Linear(256, 96, bias=True)
    layer.quantize("int8")
    layer.quantized.set_activations("int8")
    weight_only = copy.deepcopy(layer.quantized)
    weight_only.set_activations(None)
    for rows in (KERNEL_ROWS + 1, 200):
        x = torch.randn(rows, 256, generator=generator) * torch.linspace(0.1, 3, 256)
        with torch.inference_mode():
            y, formula = layer(x), dynamic_int8_linear_reference(x, layer.quantized, layer.bias)
            float_activations = quantized_linear_reference(x, layer.quantized, layer.bias)
            q_rows = layer.rows(x, 32, 64)  # one of Q, K, V: rows of the matrix
        assert relative_error(y, formula) <= 1e-5
        assert relative_error(q_rows, formula[:, 32:64]) <= 1e-5
        assert 1e-4 <= relative_error(y, float_activations) <= 2e-2  # int8 activations did change the product
    x = torch.randn(KERNEL_ROWS, 256, generator=generator)
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), quantized_linear(x, weight_only, layer.bias), rtol=0, atol=0)


@pytest.mark.parametrize("kernel", [True, False])
@pytest.mark.parametrize("kind", ["int4", "int8"])
def test_bf16_activations_give_their_formula_from_four_rows_where_the_kernel_works(kernel, kind, monkeypatch):
    """activations="bf16": 4 to BF16_KERNEL_ROWS rows multiply x and the weight rounded to bfloat16 (where the kernel
    works), more rows the same in the tiles (their output rounded to bfloat16 too); a row or two, and machines
    without the kernel, keep float activations' paths, bit for bit."""
    if not kernel:
        monkeypatch.setattr(quantization, "kernel_works", lambda name: name != "quantized_native_bf16")
    bf16 = kernel and kernel_works("quantized_native_bf16")
    generator = torch.Generator().manual_seed(0)
    layer = Linear(96, 70, bias=True)
    layer.quantize(kind, 32)
    layer.quantized.set_activations("bf16")
    weight_only = copy.deepcopy(layer.quantized)
    weight_only.set_activations(None)
    for rows in (1, 4, 40, BF16_KERNEL_ROWS, BF16_KERNEL_ROWS + 1):
        x = torch.randn(rows, 96, generator=generator)
        with torch.inference_mode():
            y, plain = layer(x), quantized_linear(x, weight_only, layer.bias)
            formula = bf16_linear_reference(x, layer.quantized, layer.bias)
            q_rows = layer.rows(x, 16, 48)  # one of Q, K, V: rows of the matrix
        if bf16 and 4 <= rows <= BF16_KERNEL_ROWS:
            assert relative_error(y, formula) <= 1e-5 and relative_error(q_rows, formula[:, 16:48]) <= 1e-5, rows
            assert relative_error(y, plain) >= 1e-4, rows  # bfloat16 did round the activations
        elif bf16 and rows > 4:  # the tiles in bfloat16: the formula's product rounded to bfloat16 (2^-9), then b
            assert relative_error(y, formula) <= 4e-3 and relative_error(q_rows, formula[:, 16:48]) <= 4e-3, rows
            assert relative_error(y, plain) >= 1e-4, rows
        else:
            torch.testing.assert_close(y, plain, rtol=0, atol=0)


def test_bf16_activations_reach_every_quantized_matrix_and_the_output_layer():
    model = tiny_llama().quantize("int4", embeddings="int8", activations="bf16")
    weights = [m for m in model.modules() if isinstance(m, QuantizedWeight)]
    assert len(weights) > 1 and all(w.activations == "bf16" for w in weights)
    assert (
        Quantization("int4", activations="bf16").apply(tiny_llama()).layers[0].ffn.fc1.quantized.activations == "bf16"
    )


@pytest.mark.parametrize(
    "options, words",
    [
        (dict(kind="int4", activations="int8"), "need int8 weights"),
        (dict(kind="int8", group_size=32, activations="int8"), "without --group-size"),
        (dict(kind="int8", activations="fp8"), "unknown activations 'fp8'; choose int8 or bf16"),
    ],
)
def test_int8_activations_are_refused_for_other_weights_before_anything_changes(options, words):
    model = tiny_llama()
    with pytest.raises(ValueError, match=words):
        model.quantize(**options)
    assert all(m.quantized is None for m in model.modules() if isinstance(m, Linear))


def test_int8_activations_reach_every_int8_matrix_and_the_int8_output_layer():
    model = tiny_llama().quantize("int8", embeddings="int8", activations="int8")
    weights = [m for m in model.modules() if isinstance(m, QuantizedWeight)]
    assert weights and all(w.activations == "int8" for w in weights)
    model.quantize("int8")  # quantized again without: float activations
    assert all(w.activations is None for w in model.modules() if isinstance(w, QuantizedWeight))
    with pytest.raises(ValueError, match="no int8 matrix with one scale per output row"):
        tiny_llama().quantize("int4").quantize("int8", activations="int8")  # every matrix already int4


def test_seq2seq_and_bert_quantize_through_the_same_linear():
    torch.manual_seed(0)
    config = TransformerConfig.t5(src_vocab_size=50, tgt_vocab_size=50, d_model=64, num_heads=4, d_ff=128, num_layers=2)
    t5 = Transformer(config).eval()
    src, tgt = torch.randint(3, 50, (2, 7)), torch.randint(3, 50, (2, 5))
    with torch.inference_mode():
        expected = t5(src, tgt)
        q = copy.deepcopy(t5).quantize("int8", embeddings="int8")
        assert relative_error(q(src, tgt), expected) <= 0.03
        memory = q.encode(src)  # cross-attention keys and values from rows of the quantized [W_Q; W_K; W_V]
        kv = q.cross_attention_kv(memory)
        assert len(kv) == 2 and kv[0][0].shape[0] == 2
    bert = Bert(BertConfig(vocab_size=60, d_model=64, num_heads=4, d_ff=128, num_layers=2, max_seq_length=32)).eval()
    ids = torch.randint(0, 60, (2, 9))
    with torch.inference_mode():
        assert relative_error(copy.deepcopy(bert).quantize("int4")(ids), bert(ids)) <= 0.2


def test_packed_weights_are_made_once_and_again_only_when_the_weight_changes():
    if not onednn.packs(torch.float32):
        pytest.skip(f"oneDNN packing does not work here: {kernel_status('onednn_packed_fp32')}")
    model = tiny_llama()
    layer = model.layers[0].ffn.fc1
    with torch.inference_mode(), packed_weights(model):
        first = layer.packed_weight
    with packed_weights(model):
        assert layer.packed_weight is first  # a second generate does not pack again
    with torch.no_grad():
        layer.weight.add_(1.0)
    with packed_weights(model):
        assert layer.packed_weight is not first  # the weight changed: packed anew
        x = torch.randn(3, 64)
        with torch.inference_mode():
            assert torch.allclose(layer(x), torch.nn.functional.linear(x, layer.weight), atol=1e-4)
    copied = copy.deepcopy(model)  # a model that keeps packed copies can still be copied (without them)
    assert copied.layers[0].ffn.fc1.packed_weight is None and layer.packed_weight is not None
    model.train()
    with torch.inference_mode():  # a model made under inference_mode (no version counters) packs too
        made = tiny_llama()
        with packed_weights(made):
            assert made.layers[0].ffn.fc1.packed_weight is not None
    assert onednn.packs(torch.float32)
    assert layer.packed_weight is None


@pytest.mark.parametrize("kind", ["q8_0", "q4_0"])
def test_export_to_gguf_reads_back(tmp_path, kind):
    from gguf import GGMLQuantizationType, GGUFReader

    from glassformer.tokenizer import Tokenizer

    text = "Hello world, 123. The quick brown fox jumps over the lazy dog; ça va? 日本語"
    tokenizer = Tokenizer.train([text] * 10, vocab_size=300)  # byte-level BPE, as GPT-2's but small
    torch.manual_seed(0)
    config = GPTConfig.llama(
        vocab_size=tokenizer.vocab_size,
        max_seq_length=64,
        d_model=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        d_ff=128,
    )
    config.tie_embeddings, config.eos_token_id = True, 0  # <|endoftext|>, the trained tokenizer's first token
    model = GPT(config).eval().quantize("int8", group_size=32, embeddings="int8")
    path = model.save_gguf(tmp_path / "model.gguf", tokenizer, kind)
    reader = GGUFReader(str(path))
    types = {t.name: t.tensor_type for t in reader.tensors}
    expected = GGMLQuantizationType.Q8_0 if kind == "q8_0" else GGMLQuantizationType.Q4_0
    assert types["blk.0.attn_q.weight"] == expected and types["token_embd.weight"] == expected
    assert types["blk.0.attn_norm.weight"] == GGMLQuantizationType.F32 and "output.weight" not in types
    # glassformer's own reader of the container sees what gguf's sees, and refuses the file cut short in one line
    ours = GGUFFile(path)
    assert ours.metadata == {n: f.contents() for n, f in reader.fields.items() if not n.startswith("GGUF.")}
    for mine, theirs in zip(ours.tensors, reader.tensors, strict=True):
        assert (mine.name, mine.tensor_type, mine.shape) == (theirs.name, theirs.tensor_type, tuple(theirs.shape))
        assert mine.data.dtype == theirs.data.dtype and np.array_equal(mine.data, theirs.data)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="runs past the end of the file"):
        GGUFFile(cut)
    ids = torch.tensor([tokenizer.encode("Hello world, 123")])
    with torch.inference_mode():
        back = GPT.from_pretrained(path, quantization=Quantization("int8" if kind == "q8_0" else "int4"))
        assert relative_error(back(ids), model(ids)) <= (0.01 if kind == "q8_0" else 0.2)
    assert Tokenizer.from_pretrained(path).encode("Hello world, 123") == tokenizer.encode("Hello world, 123")


def test_quantize_makes_auto_precision_float32_on_the_cpu_with_bf16_activations_where_native(capsys):
    import argparse

    from glassformer.cli.options import quantization_of, report_placement

    args = argparse.Namespace(
        device="cpu", precision="auto", quantize="int4", group_size=None, quantize_embeddings=None
    )
    placement = report_placement(args)
    assert placement.precision == "fp32" and "--quantize" in placement.reason  # the kernels take float32
    native = kernel_works("quantized_native_bf16")  # auto's bfloat16, in the products, where the kernel has it
    assert quantization_of(args) == Quantization("int4", activations="bf16" if native else None)
    assert ("in bfloat16" in placement.reason) == native
    args.quantize_activations = "int8"  # asked for: as asked
    assert quantization_of(args) == Quantization("int4", activations="int8")
    args.quantize_activations, args.precision = None, "fp32"
    assert quantization_of(args) == Quantization("int4")
    args.precision = "bf16"
    assert report_placement(args).precision == "bf16"  # asked for: as asked (the reference path serves it)
