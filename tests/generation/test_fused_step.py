"""The fused decoding step (``glassformer.generation.fused_step`` over the operator of
``glassformer.backends.cpu.decoder``) against the modules it stands in for: logits and cache token by token, greedy
tokens, and the inputs it must leave to the modules."""

import copy
import dataclasses
import os
import subprocess
import sys

import pytest
import torch

from glassformer.backends.kernels import kernel_status, kernel_works
from glassformer.generation import fused_step
from glassformer.generation.seq2seq import SourceConditionedDecoder, translate_ids
from glassformer.generation.step import choose_step
from glassformer.models.gpt import GPT, GPTConfig
from glassformer.models.transformer import Transformer, TransformerConfig
from glassformer.nn.cache import KVCache
from glassformer.tolerance import tolerance

pytestmark = [
    pytest.mark.cpu_class,  # the kernel is built for the CPU class
    pytest.mark.skipif(
        not kernel_works("quantized_decoder_step"),
        reason=f"the fused decoding step is not available here: {kernel_status('quantized_decoder_step')}",
    ),
]


def llama(num_kv_heads=2, vocab_size=96, seed=0, **fields) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig.llama(
        vocab_size=vocab_size, max_seq_length=64, d_model=64, num_layers=3, num_heads=4, num_kv_heads=num_kv_heads,
        d_ff=128, rope_theta=500.0, **fields,
    )  # fmt: skip
    return GPT(config).eval()


def modules_only(monkeypatch):
    """Decode without the fused step (the modules, the reference): the fused step declines every input, and the step
    chosen is the modules (beam search then keeps a ``KVCache``, not the blocks shared between beams)."""
    monkeypatch.setattr(fused_step, "step", lambda *args: None)
    monkeypatch.setattr(fused_step, "takes", lambda model: False)


def filled(cache) -> tuple[torch.Tensor, torch.Tensor]:
    """A cache's keys and values at the positions written (the rest of its memory is never cleared nor read)."""
    return cache.keys[:, :, :, : cache.length], cache.values[:, :, :, : cache.length]


def near(ours: torch.Tensor, theirs: torch.Tensor, bound: float) -> bool:
    """Keys or values within ``bound`` of the largest of ``theirs`` — and, in a bfloat16 cache (``cache_dtype``: a
    model quantized with ``activations="bf16"``), one unit of bfloat16 more: where the two routes computed a value a
    little apart, each rounds it to its own neighbour (2^-8 to 2^-7 of it apart)."""
    unit = 2**-7 * theirs.float().abs() if theirs.dtype == torch.bfloat16 else 0.0
    return bool(((ours.float() - theirs.float()).abs() <= bound * theirs.float().abs().max() + unit).all())


def step_by_step(model, ids, steps=6):
    """Scores of each decoding step ``(1, 1 + steps, vocab)`` and the cache after them: the prompt at once, then
    one token at a time through the step ``generate`` would choose (glassformer.generation.step)."""
    cache, step = model.make_cache(1, ids.size(1) + steps), choose_step(model)
    scores = [step(ids, None, cache)]
    for _ in range(steps):
        scores.append(step(scores[-1].argmax(-1, keepdim=True), None, cache))
    return torch.stack(scores, 1), cache


@pytest.mark.parametrize("kind,group", [("int4", 32), ("int4", 64), ("int8", None), ("int8", 32)])
@pytest.mark.parametrize("num_kv_heads", [1, 2, 4])
def test_the_fused_step_gives_the_modules_logits_and_cache(monkeypatch, kind, group, num_kv_heads):
    model = llama(num_kv_heads).quantize(kind, group, embeddings="int8")
    ids = torch.randint(0, 96, (1, 5))
    with torch.inference_mode():
        fused, fused_cache = step_by_step(model, ids)
        modules_only(monkeypatch)
        expected, cache = step_by_step(model, ids)
    # each of the two is within ~1e-4 of the exact products (the activations rounded to 16 bits, tests/nn); they round
    # at different places (the step's own norms and attention), so their difference is bounded by the sum: in the
    # logits and in the keys and values alike (int4 with groups of 64 measured up to 1.0e-4 in the cache)
    assert (fused - expected).abs().max() <= 2e-4 * expected.abs().max()
    assert fused_cache.length == cache.length
    for ours, theirs in zip(filled(fused_cache), filled(cache), strict=True):
        assert near(ours, theirs, 2e-4)


def test_the_fused_step_runs_when_it_fits_and_greedy_tokens_agree(monkeypatch, fused_steps):
    model = llama().quantize("int4")
    ids = torch.randint(0, 96, (1, 4))
    with torch.inference_mode():
        fused = model.generate(ids, max_new_tokens=12, eos_token_id=None)
        assert fused_steps == [True] * 11  # every step after the prompt
        modules_only(monkeypatch)
        assert torch.equal(fused, model.generate(ids, max_new_tokens=12, eos_token_id=None))


def test_beam_search_shares_blocks_between_beams_and_finds_the_modules_beams(monkeypatch, fused_steps):
    """Beam search with the fused step: the beams' cache is ``BeamBlocks`` (each beam takes its parent's blocks), and
    its answers are the modules' with a ``KVCache`` whose rows are copied."""
    from glassformer.generation import search
    from glassformer.nn.slot_cache import BeamBlocks

    model = llama().quantize("int4")
    ids = torch.randint(0, 96, (2, 4))
    made = []
    real = search.beams_cache
    monkeypatch.setattr(search, "beams_cache", lambda *args: made.append(real(*args)) or made[-1])
    with torch.inference_mode():
        fused = model.generate(ids, max_new_tokens=20, num_beams=3, eos_token_id=None, num_return_sequences=3)
        assert isinstance(made[-1], BeamBlocks) and fused_steps and all(fused_steps)
        modules_only(monkeypatch)
        expected = model.generate(ids, max_new_tokens=20, num_beams=3, eos_token_id=None, num_return_sequences=3)
        assert not isinstance(made[-1], BeamBlocks)
    assert torch.equal(fused, expected)


def gpt2(activation="gelu_tanh", seed=0) -> GPT:
    """GPT-2's layout, small: LayerNorm, learned positions, a GELU feed-forward, biases — the biases and the norms'
    β drawn at random, so that every one of them counts."""
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=96, max_seq_length=64, d_model=64, num_layers=3, num_heads=4, d_ff=128,
                       dropout=0.0, attention_dropout=0.0, activation=activation)  # fmt: skip
    model = GPT(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return model


@pytest.mark.parametrize("kind,group", [("int4", 32), ("int8", None)])
@pytest.mark.parametrize("activation", ["gelu_tanh", "gelu"])
def test_gpt2s_layout_takes_the_fused_step_and_gives_the_modules_logits_and_cache(monkeypatch, fused_steps, kind,
                                                                                   group, activation):  # fmt: skip
    model = gpt2(activation).quantize(kind, group, embeddings="int8")
    ids = torch.randint(0, 96, (1, 5))
    with torch.inference_mode():
        fused, fused_cache = step_by_step(model, ids)
        assert fused_steps == [True] * 6  # every step after the prompt
        modules_only(monkeypatch)
        expected, cache = step_by_step(model, ids)
    assert (fused - expected).abs().max() <= 2e-4 * expected.abs().max()  # as the Llama test above
    for ours, theirs in zip(filled(fused_cache), filled(cache), strict=True):
        assert near(ours, theirs, 2e-4)


def test_gpt2s_layout_decodes_left_padded_rows_and_blocks_as_the_modules_do(monkeypatch, fused_steps):
    """Learned positions: each left-padded row counts its positions from its first real token, as the modules do;
    a block of one sequence (speculative decoding's check) too."""
    model = gpt2().quantize("int4")
    ids = torch.randint(1, 96, (3, 6))
    mask = torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1]])
    with torch.inference_mode():
        fused = model.generate(ids, attention_mask=mask, max_new_tokens=8, eos_token_id=None, pad_token_id=0)
        assert fused_steps == [True] * 7
        ours, theirs = model.make_cache(1, 16), model.make_cache(1, 16)
        model(ids[:1, :3], cache=ours)
        model(ids[:1, :3], cache=theirs)
        block = fused_step.block(model, ids[:1, 3:], ours)
        expected_block = model(ids[:1, 3:], cache=theirs)[0]
        modules_only(monkeypatch)
        assert torch.equal(fused, model.generate(ids, attention_mask=mask, max_new_tokens=8, eos_token_id=None,
                                                 pad_token_id=0))  # fmt: skip
    assert block is not None and (block - expected_block).abs().max() <= 2e-4 * expected_block.abs().max()


@pytest.mark.parametrize("layout", ["llama", "gpt2"])
def test_the_fast_recipe_s_layers_take_the_fused_step_and_give_the_modules_logits(monkeypatch, fused_steps, layout):
    """``--recipe fast``'s layers (qk_norm: each head's query and key divided by its RMS before the rotation; ReLU²
    in GPT-2's layout) in the step, as in the modules."""
    if layout == "llama":
        model = llama(qk_norm=True)
    else:
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=96, max_seq_length=64, d_model=64, num_layers=3, num_heads=4, d_ff=128,
                              dropout=0.0, attention_dropout=0.0, activation="relu2", qk_norm=True)).eval()  # fmt: skip
    model.quantize("int4", embeddings="int8")
    ids = torch.randint(0, 96, (1, 5))
    with torch.inference_mode():
        fused, fused_cache = step_by_step(model, ids)
        assert fused_steps == [True] * 6
        modules_only(monkeypatch)
        expected, cache = step_by_step(model, ids)
    assert (fused - expected).abs().max() <= 2e-4 * expected.abs().max()  # as the tests above
    for ours, theirs in zip(filled(fused_cache), filled(cache), strict=True):
        assert near(ours, theirs, 2e-4)


@pytest.mark.parametrize("heads", [4, 8])  # head_dim 16 (16 lanes at a time) and 8 (the step's plain loops)
@pytest.mark.parametrize("kind", ["int4", "int8"])
def test_a_bfloat16_cache_holds_the_modules_keys_and_gives_their_logits(monkeypatch, fused_steps, kind, heads):
    """A model whose caches keep bfloat16 (``cache_dtype``, which ``activations="bf16"`` sets): the step writes each
    key and value rounded as torch rounds it, and attends over them widened — as the modules do with the same cache.
    Where the two computed a key a little apart, they may round it a unit of bfloat16 (2^-8 of it) apart."""
    torch.manual_seed(0)
    config = GPTConfig.llama(vocab_size=96, max_seq_length=64, d_model=64, num_layers=3, num_heads=heads,
                             num_kv_heads=2, d_ff=128, rope_theta=500.0)  # fmt: skip
    model = GPT(config).eval().quantize(kind, embeddings="int8")
    assert model.cache_dtype is None and model.make_cache(1, 4).keys.dtype == torch.float32
    model.cache_dtype = torch.bfloat16
    ids = torch.randint(0, 96, (1, 5))
    with torch.inference_mode():
        fused, fused_cache = step_by_step(model, ids)
        assert fused_steps == [True] * 6 and fused_cache.keys.dtype == torch.bfloat16
        modules_only(monkeypatch)
        expected, cache = step_by_step(model, ids)
    for ours, theirs in zip(filled(fused_cache), filled(cache), strict=True):
        assert near(ours, theirs, 2e-4)
    assert (fused - expected).abs().max() <= 2e-3 * expected.abs().max()
    bf16 = llama().quantize(kind, activations="bf16")
    assert bf16.make_cache(1, 4).keys.dtype == bf16.make_slot_cache(2, 8).keys.dtype == torch.bfloat16
    assert bf16.quantize(kind).make_cache(1, 4).keys.dtype == torch.float32  # quantized anew without: float32
    translator = encoder_decoder("pre-norm").quantize("int4", activations="bf16")
    assert translator.make_cache(1, 4).keys.dtype == torch.bfloat16


@pytest.mark.parametrize("why", ["float weights", "gradient", "training", "a float16 cache", "a mask with a hole"])
def test_the_modules_serve_what_the_fused_step_does_not_fit(why):
    model = llama()
    if why != "float weights":
        model.quantize("int8")
    cache = model.make_cache(2, 8, torch.float16 if why == "a float16 cache" else None)
    cache.advance(2)
    mask = torch.tensor([[1, 0, 1], [1, 1, 1]]) if why == "a mask with a hole" else None
    if why == "training":
        model.train()
    ids = torch.randint(0, 96, (2, 1))
    with torch.set_grad_enabled(why == "gradient"):
        assert fused_step.step(model, ids, cache, mask) is None
    assert cache.length == 2


@pytest.mark.parametrize("activations", [None, "bf16"])
def test_left_padded_batches_decode_as_the_modules_do(monkeypatch, fused_steps, activations):
    """Rows of different prompt lengths, left-padded: each row attends from its first real token, rotated by its
    own positions. With bfloat16 activations, five rows (4 or more: the products take them in bfloat16 where the
    kernel works, in the step and in the modules alike)."""
    model = llama().quantize("int4", embeddings="int8", activations=activations)
    rows = 5 if activations else 3
    ids = torch.randint(1, 96, (rows, 6))
    mask = torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1], [0, 1, 1, 1, 1, 1], [1] * 6][:rows])
    with torch.inference_mode():
        fused = model.generate(ids, attention_mask=mask, max_new_tokens=10, eos_token_id=None, pad_token_id=0)
        assert fused_steps == [True] * 9
        cache = model.make_cache(rows, 8)
        model(ids[:, :5], attention_mask=mask[:, :5], cache=cache)
        step = fused_step.step(model, ids[:, 5:], cache, mask)
        modules_only(monkeypatch)
        assert torch.equal(fused, model.generate(ids, attention_mask=mask, max_new_tokens=10, eos_token_id=None,
                                                 pad_token_id=0))  # fmt: skip
        cache = model.make_cache(rows, 8)
        model(ids[:, :5], attention_mask=mask[:, :5], cache=cache)
        expected = model(ids[:, 5:], attention_mask=mask, cache=cache)
    # bfloat16: measured 0 where the kernel multiplies it (the two paths' small differences vanish when their
    # activations round to the same bfloat16 values, and the products are the same kernel's); a value that rounds the
    # other way moves a logit by up to ~2^-9 of its size
    assert (step - expected).abs().max() <= (2e-3 if activations else 1e-4) * expected.abs().max()


def test_a_server_s_slots_of_different_lengths_decode_as_the_modules_do(monkeypatch, fused_steps):
    """A SlotCache view: rows of their own lengths in blocks of 4 positions handed out of order (the operator reads
    them through the block table), a free slot riding along; only active rows advance."""
    model = llama().quantize("int8", 32)
    prompts = [torch.randint(0, 96, (1, n)) for n in (3, 7)]

    def run():
        slots = model.make_slot_cache(3, 16, block=4)
        slots.free_blocks.reverse()  # the highest block first: tables run backwards through the pool
        for slot, prompt in zip((0, 2), prompts, strict=True):
            slots.reserve(slot, prompt.size(1))
            model(prompt, cache=slots.view([slot]))
        out = []
        for _ in range(4):
            for slot in (0, 2):
                slots.reserve(slot, slots.lengths[slot] + 1)
            view = slots.view(range(3), active=[True, False, True])
            ids = torch.tensor([[5], [0], [9]])
            out.append(choose_step(model)(ids, view.attention_mask(1), view))
        return torch.stack(out, 1)[[0, 2]], slots.lengths

    with torch.inference_mode():
        fused, lengths = run()
        assert fused_steps == [True] * 4
        modules_only(monkeypatch)
        expected, expected_lengths = run()
    assert lengths == expected_lengths == [7, 0, 11]
    assert (fused - expected).abs().max() <= 1e-4 * expected.abs().max()


@pytest.mark.parametrize("activations", [None, "bf16"])
@pytest.mark.parametrize("kind", ["int4", "int8"])
def test_a_mixed_step_of_decoding_rows_and_prompt_chunks_gives_the_modules_logits(kind, activations):
    """The server's mixed step (``DecodingStep.mixed``): two slots' next tokens and two prompts' chunks (one going
    on from its cached start, one from nothing), in blocks handed out of order, as rows of one step — each part's
    last logits, the cache and the lengths as the modules give them part by part. With bfloat16 activations the
    step's products take them (as many rows as here) and the modules' products of each part's rows do too, or not
    (fewer than 4): equal within bfloat16's rounding."""
    if activations and not kernel_works("quantized_native_bf16"):
        pytest.skip("this CPU does not multiply bfloat16 (quantized_native_bf16)")
    model = llama().quantize(kind, 32, activations=activations)
    prompts = [torch.randint(0, 96, (n,)).tolist() for n in (3, 7, 5)]
    chunks = [torch.randint(0, 96, (n,)).tolist() for n in (6, 9)]

    def run(fused):
        slots = model.make_slot_cache(4, 24, block=4)
        slots.free_blocks.reverse()  # the highest block first: tables run backwards through the pool
        for slot, prompt in zip((0, 2, 3), prompts, strict=True):
            slots.reserve(slot, len(prompt))
            model(torch.tensor([prompt]), cache=slots.view([slot]))
        parts = [(2, [5]), (0, [9]), (3, chunks[0]), (1, chunks[1])]
        for slot, tokens in parts:
            slots.reserve(slot, slots.lengths[slot] + len(tokens))
        step = choose_step(model)
        if not fused:
            step = dataclasses.replace(step, kind="modules")
        return step.mixed(parts, slots), slots

    with torch.inference_mode():
        ours, slots = run(fused=True)
        expected, reference = run(fused=False)
    bound = 1e-2 if activations else 1e-4  # measured 1.3e-3 and 3.5e-5
    assert slots.lengths == reference.lengths == [4, 9, 8, 11]
    assert (ours - expected).abs().max() <= bound * expected.abs().max()
    for slot in range(4):
        blocks, theirs = slots.tables[slot], reference.tables[slot]
        assert near(slots.keys[:, blocks], reference.keys[:, theirs], bound)
    with torch.inference_mode(), pytest.raises(ValueError, match="reserve them first"):
        fused_step.mixed(model, slots, [(0, [1, 2, 3, 4, 5, 6, 7, 8])])


def test_new_weights_in_the_same_model_are_used(monkeypatch):
    """What the step prepares points at the weights: a load_state_dict in place, or quantizing anew, is seen."""
    model = llama().quantize("int4")
    other = llama(seed=1).quantize("int4")
    ids = torch.randint(0, 96, (1, 4))
    with torch.inference_mode():
        before, _ = step_by_step(model, ids)
    model.load_state_dict(other.state_dict())
    with torch.inference_mode():
        after, _ = step_by_step(model, ids)
        expected, _ = step_by_step(other, ids)
    assert not torch.allclose(before, after)
    assert (after - expected).abs().max() <= 1e-5 * expected.abs().max()
    # a matrix given a new QuantizedWeight object (another format): a new plan
    model.layers[1].ffn.fc1.quantized = copy.deepcopy(llama(seed=2).quantize("int8").layers[1].ffn.fc1.quantized)
    with torch.inference_mode():
        fused, _ = step_by_step(model, ids)
        modules_only(monkeypatch)
        expected, _ = step_by_step(model, ids)
    assert (fused - expected).abs().max() <= 1e-4 * expected.abs().max()


PLAIN_BUILD = """
import json
import torch
from glassformer.backends.cpu import extension
from glassformer.generation.step import choose_step
from glassformer.models.gpt import GPT, GPTConfig
from glassformer.models.transformer import Transformer, TransformerConfig
from glassformer.nn.cache import KVCache
from glassformer.nn.quantization import QuantizedWeight, quantized_linear, quantized_linear_reference

assert extension.load(), extension.why_not
print("simd", torch.ops.glassformer.simd())
x = torch.randn(3, 96)
for kind, group in (("int8", None), ("int8", 32), ("int4", 32), ("int4", 96)):
    weight = QuantizedWeight.from_float(torch.randn(20, 96), kind, group)
    expected = quantized_linear_reference(x, weight)
    assert (quantized_linear(x, weight) - expected).abs().max() <= 1e-3 * expected.abs().max(), kind
torch.manual_seed(0)
config = GPTConfig.llama(vocab_size=96, max_seq_length=64, d_model=64, num_layers=3, num_heads=4, num_kv_heads=2,
                         d_ff=128, rope_theta=500.0)
model = GPT(config).eval().quantize("int4", embeddings="int8")
step, ids = choose_step(model), torch.randint(0, 96, (1, 5))
assert step.kind == "fused"
with torch.inference_mode():
    for kind in ("fused", "modules"):
        step.kind, cache = kind, model.make_cache(1, 12)
        scores = [step(ids, None, cache)]
        for _ in range(6):
            scores.append(step(scores[-1].argmax(-1, keepdim=True), None, cache))
        print(kind, json.dumps(torch.stack(scores).tolist()))
"""


def test_the_plain_c_kernels_compute_the_same(tmp_path):
    """Built for the CPU class ``default`` (no AVX2: the plain C loops a CPU without it runs), in a process of its
    own (a process loads one build of the operators): the products and the fused step equal the references."""
    import json

    env = {**os.environ, "GLASSFORMER_CPU": "default"}
    result = subprocess.run([sys.executable, "-c", PLAIN_BUILD], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    if sys.platform == "linux" and os.uname().machine == "x86_64":
        assert lines["simd"] == "C"
    fused, modules = (torch.tensor(json.loads(lines[kind])) for kind in ("fused", "modules"))
    assert (fused - modules).abs().max() <= 1e-4 * modules.abs().max()


@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["int4", "int8"])
def test_a_block_of_one_sequence_gives_the_modules_logits(kind, cache_dtype):
    """The fused block (speculative decoding's check): n tokens after a cached prefix, every position's logits and
    the cache as the modules give them — in a float32 cache and in a bfloat16 one."""
    model = llama().quantize(kind, 32)
    ids = torch.randint(0, 96, (1, 12))
    bound = 1e-4 if cache_dtype == torch.float32 else 2e-3  # bfloat16: as the step's test above
    with torch.inference_mode():
        ours, theirs = model.make_cache(1, 16, cache_dtype), model.make_cache(1, 16, cache_dtype)
        model(ids[:, :5], cache=ours)
        model(ids[:, :5], cache=theirs)
        block = fused_step.block(model, ids[:, 5:], ours)
        expected = model(ids[:, 5:], cache=theirs)[0]
    assert block is not None and ours.length == theirs.length == 12
    assert (block - expected).abs().max() <= bound * expected.abs().max()
    assert near(filled(ours)[0], filled(theirs)[0], 1e-4)


@pytest.mark.parametrize("num_kv_heads", [1, 2])
def test_a_block_attends_in_tiles_and_each_row_gets_what_it_gets_alone(num_kv_heads):
    """A block of 15 positions of one sequence attends in tiles of up to 4 rows, each key and value read once per
    tile: every layer's keys and values (each made from the attention of the layer below) are, bit for bit, those
    that 15 single steps write — where this build's 16-bit products treat each row alone (the AVX512-VNNI path does,
    the AVX2 one sums a block of rows in another order), the tiles' attention must too."""
    from glassformer.backends.cpu.quantized import native_linear

    model = llama(num_kv_heads=num_kv_heads).quantize("int4", 32)
    w = model.layers[0].self_attn.qkv_proj.quantized
    x = torch.randn(15, w.in_features)
    together = native_linear(x, w.codes, w.scales, w.offsets, w.group_size)
    alone = torch.cat([native_linear(x[i : i + 1], w.codes, w.scales, w.offsets, w.group_size) for i in range(15)])
    if not torch.equal(together, alone):
        pytest.skip("this build's 16-bit products of 15 rows differ from those of each row alone")
    ids = torch.randint(0, 96, (1, 20))
    with torch.inference_mode():
        tiled, single = model.make_cache(1, 32), model.make_cache(1, 32)
        model(ids[:, :5], cache=tiled)
        model(ids[:, :5], cache=single)
        assert fused_step.block(model, ids[:, 5:], tiled) is not None
        for i in range(5, 20):
            assert fused_step.step(model, ids[:, i : i + 1], single) is not None
    assert all(torch.equal(a, b) for a, b in zip(filled(tiled), filled(single), strict=True))


def test_the_step_is_chosen_once_and_forward_is_always_the_modules(monkeypatch, fused_steps):
    """generate and the server ask glassformer.generation.step: the fused step for a quantized Llama-style model,
    the modules otherwise; forward never takes the fused step, so asking for attention weights changes no logit
    beyond float32's rounding."""
    quantized = llama().quantize("int4")
    assert choose_step(quantized).kind == "fused" and choose_step(llama()).kind == "modules"
    ids = torch.randint(0, 96, (1, 5))
    with torch.inference_mode():
        caches = [quantized.make_cache(1, 8) for _ in range(2)]
        for cache in caches:
            quantized(ids[:, :4], cache=cache)
        plain = quantized(ids[:, 4:], cache=caches[0])
        with_weights = quantized(ids[:, 4:], cache=caches[1], output_attentions=True)
    assert fused_steps == []  # the same modules either way; with weights, attention takes its reference path
    torch.testing.assert_close(with_weights.logits, plain, **tolerance("fp32", depth=quantized.config.num_layers))


def encoder_decoder(layout: str, seed: int = 0):
    """A small encoder-decoder: the paper's layout (LayerNorm, biases, ReLU, sinusoidal positions) post-norm as the
    paper (no final norm) or pre-norm as `train translate` builds it, or T5's (RMSNorm, no biases, a gated GELU over
    2 key/value heads, a relative bias), `train translate --arch llama`'s (RMSNorm, rotary positions, SwiGLU, no
    biases), or the fast recipe's (pre-norm, qk_norm, ReLU²) — the biases, the norms' β and T5's bias table drawn at
    random, so that each counts."""
    torch.manual_seed(seed)
    fields = dict(src_vocab_size=96, tgt_vocab_size=96, d_model=64, num_heads=4, d_ff=128, num_layers=2,
                  max_seq_length=32, bos_token_id=1, eos_token_id=2, pad_token_id=0)  # fmt: skip
    if layout == "t5":
        config = TransformerConfig.t5(**fields, activation="gelu_tanh", gated_ffn=True, num_kv_heads=2)
    elif layout == "llama":
        config = TransformerConfig(**fields, dropout=0.0, norm_first=True, norm="rmsnorm", positional="rope",
                                   activation="silu", gated_ffn=True, bias=False, num_kv_heads=2)  # fmt: skip
    else:
        fast = {"qk_norm": True, "activation": "relu2"} if layout == "fast" else {}
        config = TransformerConfig(**fields, dropout=0.0, norm_first=layout != "post-norm", **fast)
    model = Transformer(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "relative_bias" in name:
                p.normal_(0, 0.5)
    return model


def decode_with_memory(model, src, copies, fused, steps=6):
    """Scores of ``steps`` greedy steps ``(steps, rows, vocab)`` of ``copies`` rows a source from the start token,
    through the fused step or the modules, and the cache after them."""
    decoder = SourceConditionedDecoder(model, src, copies)
    rows = src.size(0) * copies
    cache, ids, scores = decoder.make_cache(rows, 16), torch.full((rows, 1), 1), []
    for _ in range(steps):
        if fused:
            logits = fused_step.step(decoder, ids, cache, None)
            assert logits is not None
        else:
            logits = decoder(ids, cache=cache, last_token_only=True)
        scores.append(logits[:, -1])
        ids = scores[-1].argmax(-1, keepdim=True)
    return torch.stack(scores), cache


@pytest.mark.parametrize("kind,activations", [("int8", None), ("int4", None), ("int4", "bf16")])
@pytest.mark.parametrize("layout", ["pre-norm", "post-norm", "t5", "llama", "fast"])
@pytest.mark.parametrize("copies", [1, 2, 5])
def test_an_encoder_decoder_s_step_gives_the_modules_logits_and_cache(kind, activations, layout, copies):
    """Sources of their own lengths (right-padded), each serving ``copies`` rows (beam search's beams): every layer
    attends to its row's source in the step, as the modules' cross-attention does. bfloat16 activations: the 3, 6 or
    15 rows' products in bfloat16 from 4 rows where the kernel multiplies it, in the step and the modules alike."""
    model = encoder_decoder(layout).quantize(kind, activations=activations)
    src = torch.randint(4, 96, (3, 7))
    src[1, 5:], src[2, 3:] = 0, 0
    with torch.inference_mode():
        fused, fused_cache = decode_with_memory(model, src, copies, True)
        expected, cache = decode_with_memory(model, src, copies, False)
    # as the decoder-only step: two 16-bit roundings at different places (measured up to 6e-5); with bfloat16 as the
    # left-padded test above (a value rounding the other way moves a logit by up to ~2^-9 of its size), and the float
    # output layer's logits are rounded to bfloat16 as well (Linear.bf16_products): a logit may round to the value
    # next to the other route's, 2^-7 of it at most
    bound = 2e-3 if activations else 2e-4
    head = 2**-7 if activations and kernel_works("quantized_native_bf16") else 0.0
    assert (fused - expected).abs().max() <= (bound + head) * expected.abs().max()
    for ours, theirs in zip(filled(fused_cache), filled(cache), strict=True):
        assert near(ours, theirs, bound)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_translation_decodes_every_step_fused_and_as_the_modules_do(monkeypatch, fused_steps, num_beams):
    """Greedy and beam search (the beams of one source share its keys and values, the cache reordered between
    steps): the same tokens through the fused step as through the modules, and every step after the first fused."""
    model = encoder_decoder("post-norm").quantize("int8")
    src = torch.randint(4, 96, (2, 6))
    src[1, 4:] = 0
    with torch.inference_mode():
        fused = translate_ids(model, src, num_beams=num_beams, max_len_b=8)
        assert fused_steps and all(fused_steps)
        modules_only(monkeypatch)
        assert translate_ids(model, src, num_beams=num_beams, max_len_b=8) == fused


def test_the_fused_step_reads_no_position_before_writing_it(nan_caches, fused_steps):
    """The caches' memory is not cleared (``KVCache``, ``BeamBlocks``' pool): greedy and beam search of a decoder and
    translation's beam search give the same tokens, every step fused, from caches that start as NaN."""
    decoder, translator = llama().quantize("int8"), encoder_decoder("pre-norm").quantize("int8")
    ids, src = torch.randint(0, 96, (2, 5)), torch.randint(4, 96, (2, 6))
    src[1, 4:] = 0

    def decode():
        with torch.inference_mode():
            return (
                decoder.generate(ids, max_new_tokens=8).tolist(),
                decoder.generate(ids, max_new_tokens=8, num_beams=3).tolist(),
                translate_ids(translator, src, num_beams=3, max_len_b=8),
            )

    expected = decode()
    with nan_caches() as made:
        assert decode() == expected
    pools = [cache for cache in made if not isinstance(cache, KVCache)]
    assert len(pools) == 2 and fused_steps and all(fused_steps)  # each beam search's shared blocks, from NaN


@pytest.mark.parametrize("why", ["float weights", "a source with a hole", "training"])
def test_the_modules_serve_the_encoder_decoders_the_fused_step_does_not_fit(why):
    model = encoder_decoder("pre-norm")
    if why != "float weights":
        model.quantize("int8")
    src = torch.randint(4, 96, (2, 5))
    mask = torch.tensor([[1, 1, 0, 1, 1], [1] * 5]) if why == "a source with a hole" else None
    with torch.inference_mode():
        decoder = SourceConditionedDecoder(model, src, 1, mask)
        if why == "training":
            model.train()
        cache = decoder.make_cache(2, 8)
        assert fused_step.step(decoder, torch.full((2, 1), 1), cache) is None
    assert cache.length == 0
