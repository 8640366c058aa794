"""SmolLM2-135M-Instruct quantized: perplexity on held-out Shakespeare (1,024 tokens of the test plays) for float32,
int8, int4 and int4 with an int4 output layer — the quantized figures within bounds derived from float32's — and
greedy answers that stay right. int4 loads the GGUF file's Q4_1 blocks as they are (its Q8_0 embedding table as
int8); int8 quantizes the float32 weights per output channel; the int4 head quantizes the Q8_0 table (tied to the
output layer) again in groups of 32. Measured (float16 scales and offsets, AVX512-VNNI machine): float32 47.21,
int8 46.94, int8 with int8 activations (W8A8 on the 512-token windows) 47.65 (+0.9%), int4 47.21 (the file's own
codes: the float32 model is their dequantization, and quantizing it again gives the same blocks), int4 with an int4
head 50.29 (+6.5%); int4 with bfloat16 activations -0.17% (in windows of 128 tokens, the kernel's: +0.09%)."""

import copy
import math

import pytest
import torch

from glassformer.backends.kernels import kernel_status, kernel_works
from glassformer.data.shakespeare import prepare_shakespeare
from glassformer.models.gpt import GPT
from glassformer.models.quantization import Quantization
from glassformer.nn.quantization import BF16_KERNEL_ROWS, QuantizedWeight
from glassformer.tokenizer import Tokenizer

TOKENS, WINDOW = 1024, 512
ANSWERS = {"The capital of France is": "Paris", "The capital of Italy is": "Rome"}


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_pretrained("smollm2")


@pytest.fixture(scope="module")
def text_ids(tokenizer):
    text = prepare_shakespeare()["test"].read_text(encoding="utf-8")
    ids = tokenizer.encode(text[:40_000])
    assert len(ids) >= TOKENS
    return torch.tensor(ids[:TOKENS])


@pytest.fixture(scope="module")
def models(smollm2_float32):
    float32 = smollm2_float32
    int8 = copy.deepcopy(float32).quantize("int8")
    # what --quantize int8 --quantize-activations int8 loads: the matrices int8 per output row, W8A8 for the windows;
    # the file's Q8_0 table (tied output layer, int8 in groups of 32) as stored, with float activations
    int8_activations = GPT.from_pretrained("smollm2", quantization=Quantization("int8", activations="int8"))
    int4 = GPT.from_pretrained("smollm2", quantization=Quantization("int4"))
    int4_head = GPT.from_pretrained("smollm2", quantization=Quantization("int4", embeddings="int4"))
    return {"float32": float32, "int8": int8, "int8 + int8 activations": int8_activations, "int4": int4,
            "int4 + int4 head": int4_head}  # fmt: skip


def perplexity(model, ids: torch.Tensor, size: int = WINDOW) -> float:
    """exp(mean next-token loss) over windows of ``size`` tokens."""
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(ids), size):
            window = ids[start : start + size][None]
            logits = model(window)[0, :-1]
            total += float(torch.nn.functional.cross_entropy(logits, window[0, 1:], reduction="sum"))
            count += window.size(1) - 1
    return math.exp(total / count)


def test_quantized_perplexity_stays_within_bounds_of_float32(models, text_ids):
    figures = {name: perplexity(model, text_ids) for name, model in models.items()}
    base = figures["float32"]
    assert 5 < base < 200, figures  # a real model on real English verse
    assert figures["int8"] <= base * 1.01, figures
    assert figures["int8 + int8 activations"] <= base * 1.02, figures
    assert figures["int4"] <= base * 1.08, figures
    assert figures["int4 + int4 head"] <= base * 1.10, figures


@pytest.mark.skipif(not kernel_works("quantized_native_bf16"), reason=kernel_status("quantized_native_bf16"))
@pytest.mark.parametrize("size", [BF16_KERNEL_ROWS, WINDOW], ids=["the kernel", "the tiles"])
def test_bf16_activations_keep_int4_s_perplexity(models, text_ids, size):
    """int4 with bfloat16 activations, in windows of BF16_KERNEL_ROWS tokens (the kernel's bfloat16 products) and of
    WINDOW (the tiles in bfloat16): measured 69.88 against 69.82 (+0.09%) and 47.13 against 47.21 (-0.17%)."""
    model = models["int4"]
    weights = [m for m in model.modules() if isinstance(m, QuantizedWeight)]
    base = perplexity(model, text_ids, size)
    try:
        for weight in weights:
            weight.set_activations("bf16")
        bf16 = perplexity(model, text_ids, size)
    finally:
        for weight in weights:
            weight.set_activations(None)
    assert bf16 != base and bf16 <= base * 1.01, (bf16, base)


def test_int8_activations_go_to_the_matrices_and_not_to_the_grouped_table(models):
    model = models["int8 + int8 activations"]
    assert model.layers[0].ffn.fc1.quantized.activations == "int8"
    assert model.embedding.quantized.group_size == 32 and model.embedding.quantized.activations is None


def test_int4_reads_a_fraction_of_the_float32_bytes(models):
    def nbytes(model):
        tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
        return sum(t.numel() * t.element_size() for t in tensors.values())

    assert nbytes(models["int4"]) <= 0.3 * nbytes(models["float32"])
    assert models["int4"].layers[0].ffn.fc1.quantized.kind == "int4"
    assert models["int4"].embedding.quantized.kind == "int8"  # the file's Q8_0 table, as stored
    assert models["int4 + int4 head"].embedding.quantized.kind == "int4"
    assert nbytes(models["int4 + int4 head"]) <= 0.9 * nbytes(models["int4"])


@pytest.mark.parametrize("name", ["int8", "int4"])
def test_greedy_answers_stay_right(models, tokenizer, name):
    for prompt, answer in ANSWERS.items():
        ids = torch.tensor([tokenizer.encode(prompt)])
        out = models[name].generate(ids, max_new_tokens=6, eos_token_id=None)
        assert answer in tokenizer.decode(out[0, ids.size(1) :].tolist()), (name, prompt)
