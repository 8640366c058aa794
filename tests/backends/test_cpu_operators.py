"""glassformer's CPU operators (``torch.ops.glassformer``, built by ``glassformer.backends.cpu.extension``): their
registrations checked by ``torch.library.opcheck`` (schema, fake tensors for torch.compile, autograd registration),
a quantized model compiled whole with ``torch.compile``, the decoding step against its reference in torch
operations, and a build that cannot happen reported in one line."""

import pytest
import torch

from glassformer.backends.cpu import candidates, decoder, extension
from glassformer.backends.cpu.quantized import pack_int4, probe_weight
from glassformer.backends.kernels import kernel_status, kernel_works
from glassformer.nn.linear import Linear
from glassformer.nn.quantization import quantized_linear_reference

pytestmark = [
    pytest.mark.cpu_class,  # built for the CPU class
    pytest.mark.skipif(
        not kernel_works("quantized_native_int4"),
        reason=f"glassformer's CPU operators are not available here: {kernel_status('quantized_native_int4')}",
    ),
]


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_the_quantized_product_passes_opcheck(kind):
    codes, scales, offsets, _ = probe_weight(kind, 48, 64, 32)
    for x, bias in ((torch.randn(3, 64), torch.randn(48)), (torch.randn(2, 5, 64), None)):
        torch.library.opcheck(torch.ops.glassformer.quantized_linear.default, (x, codes, scales, offsets, bias, 32))


@pytest.mark.parametrize("kind,group", [("int8", 64), ("int8", 128), ("int4", 32), ("int4", 64)])
def test_the_dequantization_passes_opcheck_and_gives_the_formulas_weight(kind, group):
    codes, scales, offsets, w = probe_weight(kind, 40, 128, group, seed=3)
    torch.library.opcheck(torch.ops.glassformer.dequantize.default, (codes, scales, offsets, group))
    ours = torch.ops.glassformer.dequantize(codes, scales, offsets, group)
    assert (ours - w).abs().max() <= 1e-6 * w.abs().max()
    with pytest.raises(RuntimeError, match="int4 codes need offsets"):
        torch.ops.glassformer.dequantize(pack_int4(torch.zeros(4, 64, dtype=torch.int64)), scales[:4, :2], None, 32)


@pytest.mark.parametrize("gpt2", [False, True], ids=["llama layout", "gpt-2 layout"])
def test_the_decoding_step_passes_opcheck_and_equals_its_reference(gpt2):
    arguments = decoder.probe_arguments(gpt2=gpt2)
    layout = (True, False, "gelu_tanh") if gpt2 else (False, True, "silu")  # layer_norm, gated, activation
    inputs = torch.randn(6, 2, 1, 64, generator=torch.Generator().manual_seed(0))
    positions = torch.tensor([[0, 0], [0, 0], [0, 0]])
    operands = (inputs[5], *arguments[:3], arguments[3].clone(), arguments[4].clone(), positions, 0, 4, 2, 1e-5, 0.25,
                False, *layout)  # fmt: skip
    torch.library.opcheck(torch.ops.glassformer.decode_step.default, operands)
    theirs = [*arguments[:3], arguments[3].clone(), arguments[4].clone()]
    for position, x in enumerate(inputs[:5]):  # two rows of their own lengths: the second starts one position later
        positions = torch.tensor([[position, position], [0, min(1, position)], [position, position - min(1, position)]])
        ours = decoder.decode_step(x, *arguments, positions, 0, 4, 2, 1e-5, 0.25, False, *layout)
        expected = decoder.reference_step(x, *theirs, positions, 0, 4, 2, 1e-5, 0.25, False, *layout)
        # as the probe compares them: the random weights make attention sharp (keys of ~30), which magnifies the
        # 16-bit rounding of the activations up to ~1e-3 in a single element; in norm it stays below ~8e-4
        assert (ours - expected).norm() <= 1e-3 * expected.norm(), position
    torch.testing.assert_close(arguments[3], theirs[3], atol=1e-3, rtol=0)


@pytest.mark.parametrize("sources", [2, 1], ids=["a source a row", "two copies of one source"])
@pytest.mark.parametrize("layout", ["pre-norm", "post-norm", "t5", "fast"])
def test_an_encoder_decoder_s_step_passes_opcheck_and_equals_its_reference(sources, layout):
    """Every layer with a cross-attention over each row's source (the second source 3 real positions of 5; or both
    rows copies of one source, as beam search's beams): the paper's layout (LayerNorm, biases, ReLU), pre-norm, or
    post-norm without a final norm — or T5's (RMSNorm, no biases, a gated GELU, logit scale 1, a relative bias by
    distance in the self-attention) — or the fast recipe's (pre-norm, qk_norm, ReLU²)."""
    t5 = layout == "t5"
    arguments = decoder.probe_arguments(gpt2=not t5, cross=True)
    memory = {**decoder.probe_memory(sources), "post_norm": layout == "post-norm", "qk_norm": layout == "fast"}
    if layout == "post-norm":
        arguments[0][-2:] = [None, None]  # no final norm
    bias = torch.randn(4, 8, generator=torch.Generator().manual_seed(2)) if t5 else None  # (heads, distances)
    activation = {"t5": "gelu_tanh", "fast": "relu2"}.get(layout, "relu")
    operands = (False, not t5, t5, activation)  # one_sequence, the layout
    scale = 1.0 if t5 else 0.25
    theirs = [*arguments[:3], arguments[3].clone(), arguments[4].clone()]
    inputs = torch.randn(5, 2, 1, 64, generator=torch.Generator().manual_seed(0))
    positions = torch.zeros(3, 2, dtype=torch.long)
    torch.library.opcheck(
        torch.ops.glassformer.decode_step.default,
        (inputs[0], *arguments[:3], arguments[3].clone(), arguments[4].clone(), positions, 0, 4, 2, 1e-5, scale,
         *operands, None, False, *list(memory.values())[:4], bias, memory["post_norm"], memory["qk_norm"]),
    )  # fmt: skip
    for position, x in enumerate(inputs):
        positions = torch.full((3, 2), position)
        positions[1] = 0
        ours = decoder.decode_step(x, *arguments, positions, 0, 4, 2, 1e-5, scale, *operands, position_bias=bias,
                                   **memory)  # fmt: skip
        expected = decoder.reference_step(x, *theirs, positions, 0, 4, 2, 1e-5, scale, *operands,
                                          position_bias=bias, **memory)  # fmt: skip
        assert (ours - expected).norm() <= 1e-3 * expected.norm(), position  # as the decoder-only step above
    # the keys relative to their size (RMSNorm's, not centred, reach ~6: measured up to 1.8e-4 of it)
    assert (arguments[3] - theirs[3]).abs().max() <= 5e-4 * theirs[3].abs().max()


def test_an_encoder_decoder_s_bad_memory_is_a_one_line_error():
    arguments = decoder.probe_arguments(gpt2=True, cross=True)
    x, positions = torch.randn(2, 1, 64), torch.zeros(3, 2, dtype=torch.long)
    operands = (*arguments, positions, 0, 4, 2, 1e-5, 0.25, False, True, False, "relu")
    memory = decoder.probe_memory()
    with pytest.raises(RuntimeError, match="source 1 has 0 positions"):
        decoder.decode_step(x, *operands, **{**memory, "memory_lengths": torch.tensor([5, 0])})
    with pytest.raises(RuntimeError, match="2 sources × 2 copies for 2 rows"):
        decoder.decode_step(x, *operands, **{**memory, "copies": 2})
    with pytest.raises(RuntimeError, match="all three, or none"):
        decoder.decode_step(x, *operands, memory_keys=memory["memory_keys"])
    with pytest.raises(RuntimeError, match="keys, values: contiguous float32"):  # cross weights, no memory: 3 layers
        decoder.decode_step(x, *operands)
    with pytest.raises(RuntimeError, match="outside the cache or its position bias"):
        far = torch.tensor([[3, 3], [0, 0], [3, 3]])  # keys 3 positions back, a bias for distances 0 and 1
        decoder.decode_step(x, *arguments, far, 0, 4, 2, 1e-5, 0.25, False, True, False, "relu",
                            position_bias=torch.zeros(4, 2), **memory)  # fmt: skip


@pytest.mark.parametrize("kind,group", [("int8", 32), ("int8", 160), ("int4", 32), ("int4", 160)])
def test_bf16_products_give_their_formula_from_four_rows_and_the_16_bit_products_below(kind, group):
    """bf16=True: 4 or more rows give F.linear of x and the weight in bfloat16 (where this build multiplies it; K = 160:
    two pairs of blocks and an odd one), fewer rows — and every row count elsewhere — the 16-bit products, bit for
    bit."""
    codes, scales, offsets, w = probe_weight(kind, 37, 160, group, seed=4)
    bias = torch.randn(37)
    torch.library.opcheck(torch.ops.glassformer.quantized_linear.default,
                          (torch.randn(5, 160), codes, scales, offsets, bias, group, True))  # fmt: skip
    native = torch.ops.glassformer.bf16_dot()
    for rows in (1, 3, 4, 9, 40):
        x = torch.randn(rows, 160, generator=torch.Generator().manual_seed(rows))
        ours = torch.ops.glassformer.quantized_linear(x, codes, scales, offsets, bias, group, True)
        sixteen = torch.ops.glassformer.quantized_linear(x, codes, scales, offsets, bias, group, False)
        if rows < 4 or not native:
            assert torch.equal(ours, sixteen), rows
            continue
        expected = torch.nn.functional.linear(x.bfloat16().float(), w.bfloat16().float(), bias)
        assert (ours - expected).norm() <= 1e-5 * expected.norm(), rows  # the same products, summed in another order
        assert (sixteen - expected).norm() >= 1e-4 * expected.norm(), rows  # bfloat16 did round x


@pytest.mark.parametrize("rows", [5, 20])
@pytest.mark.parametrize("gpt2", [False, True], ids=["llama layout", "gpt-2 layout"])
def test_the_decoding_step_with_bf16_products_equals_its_reference(gpt2, rows):
    """decode_step's bf16: a block of 5 or 20 positions of one sequence (bfloat16 products where this build has them —
    20 rows: as outer products, the residual added to x —, else the 16-bit ones) against the reference with the
    products rounded the same way."""
    arguments = decoder.probe_arguments(gpt2=gpt2)
    arguments[3], arguments[4] = torch.zeros(2, 2, 2, 24, 16), torch.zeros(2, 2, 2, 24, 16)  # room for 20 positions
    layout = (True, False, "gelu_tanh") if gpt2 else (False, True, "silu")
    theirs = [*arguments[:3], arguments[3].clone(), arguments[4].clone()]
    x = torch.randn(rows, 1, 64, generator=torch.Generator().manual_seed(5))
    positions = torch.stack((torch.arange(rows), torch.zeros(rows, dtype=torch.long), torch.arange(rows)))
    operands = (positions, 0, 4, 2, 1e-5, 0.25, True, *layout, None)
    ours = decoder.decode_step(x, *arguments, *operands, True)
    expected = decoder.reference_step(x, *theirs, *operands, torch.ops.glassformer.bf16_dot())
    assert (ours - expected).norm() <= 1e-3 * expected.norm()  # as the float32 step: attention's own rounding
    torch.testing.assert_close(arguments[3], theirs[3], atol=1e-3, rtol=0)


def test_bad_operands_are_one_line_errors():
    codes, scales, offsets, _ = probe_weight("int4", 48, 64, 32)
    with pytest.raises(RuntimeError, match="x has 32 features, the weight takes 64"):
        torch.ops.glassformer.quantized_linear(torch.randn(2, 32), codes, scales, offsets, None, 32)
    with pytest.raises(RuntimeError, match="int4 codes need offsets"):
        torch.ops.glassformer.quantized_linear(torch.randn(2, 64), codes, scales, None, None, 32)


def test_a_quantized_layer_compiles_whole():
    """The operator has a fake implementation, so torch.compile traces through it without a graph break."""
    layer = Linear(64, 48, activation="silu").eval()
    layer.quantize("int4", 32)
    x = torch.randn(3, 64)
    with torch.no_grad():
        compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
        expected = torch.nn.functional.silu(quantized_linear_reference(x, layer.quantized, layer.bias))
        torch.testing.assert_close(compiled(x), expected, atol=1e-3 * float(expected.abs().max()), rtol=0)


def test_a_build_that_fails_says_why(monkeypatch, tmp_path):
    """A compiler that is not there: no operators, the reason in one line (``glassformer env`` prints it)."""
    monkeypatch.setenv("GLASSFORMER_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    monkeypatch.setattr(extension, "FLAG_SETS", ([],))
    extension.load.cache_clear()
    try:
        assert not extension.load()
        assert extension.why_not[-1].startswith("could not build csrc/ops.cpp")
        assert "not built (could not build" in extension.describe()
    finally:
        extension.load.cache_clear()
        monkeypatch.undo()
        assert extension.load()


def test_one_sequence_rows_are_a_causal_block_of_one_sequence():
    """``one_sequence``: five rows are positions 2..6 of the sequence in cache row 1 (rows 0 untouched), each row
    attending to the positions up to its own: the reference computes it position by position."""
    arguments = decoder.probe_arguments()
    theirs = [*arguments[:3], arguments[3].clone(), arguments[4].clone()]
    x = torch.randn(5, 1, 64)
    write_at = torch.arange(2, 7)
    positions = torch.stack((write_at, torch.zeros(5, dtype=torch.long), write_at))
    ours = decoder.decode_step(x, *arguments, positions, 1, 4, 2, 1e-5, 0.25, True)
    expected = decoder.reference_step(x, *theirs, positions, 1, 4, 2, 1e-5, 0.25, True)
    torch.testing.assert_close(ours, expected, atol=1e-3 * float(expected.abs().max()), rtol=0)
    torch.testing.assert_close(arguments[3], theirs[3], atol=1e-3, rtol=0)
    assert not arguments[3][:, 0].any()


@pytest.mark.parametrize("vocab,k", [(37, 5), (8000, 8), (16, 16), (17, 1), (100, 12)])
def test_top_log_probs_passes_opcheck_and_gives_log_softmax_s_best(vocab, k):
    """Each row's k best log-probabilities and their tokens, as ``log_softmax`` then ``topk`` give them: rows of whole
    chunks of 16 and with a remainder, tokens banned to -inf, a step axis."""
    logits = torch.randn(2, 3, vocab) * 5
    logits[0, 1, ::3] = float("-inf")
    torch.library.opcheck(torch.ops.glassformer.top_log_probs.default, (logits, k))
    values, tokens = torch.ops.glassformer.top_log_probs(logits, k)
    expected, expected_tokens = candidates.reference(logits, k)
    torch.testing.assert_close(values, expected, rtol=0, atol=2e-6)
    ranked = expected > float("-inf")  # the banned tokens' order among themselves is topk's to choose
    assert torch.equal(tokens[ranked], expected_tokens[ranked])


def test_top_log_probs_ranks_ties_by_token_and_flags_rows_with_no_finite_best():
    """Equal logits: the lower token first. A row holding a NaN, or whose best is ±inf, gets NaN values (as
    ``log_softmax`` gives, so beam search refuses them)."""
    values, tokens = torch.ops.glassformer.top_log_probs(torch.zeros(1, 40), 4)
    assert tokens.tolist() == [[0, 1, 2, 3]]
    torch.testing.assert_close(values, torch.full((1, 4), -torch.log(torch.tensor(40.0)).item()))
    logits = torch.randn(4, 50)
    logits[0, 33], logits[1] = float("nan"), float("-inf")
    logits[2, 5] = float("inf")
    values = torch.ops.glassformer.top_log_probs(logits, 3)[0]
    assert values[:3].isnan().all() and not values[3].isnan().any()
    assert candidates.reference(logits, 3)[0][:3].isnan().any(-1).all()  # the reference's rows are NaN there too
    with pytest.raises(RuntimeError, match="k = 51: between 1 and the 50 logits of a row"):
        torch.ops.glassformer.top_log_probs(logits, 51)
    with pytest.raises(RuntimeError, match="logits: float32 on the CPU"):
        torch.ops.glassformer.top_log_probs(logits.double(), 3)
