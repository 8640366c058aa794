"""Llama-style GPT against transformers' LlamaForCausalLM on random checkpoints that the tests write themselves
(grouped-query attention, tied and untied heads, biases), and the GGUF reader on a GGUF file written here."""

import pytest
import torch
from decoder_checks import check_batched_generation, check_decoding_equivalences, left_padded_logits_difference
from equivalence import PRECISIONS, in_precision

from glassformer.models.gpt import GPT, GPTConfig

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

VOCAB = 64
EOS = 2


def write_llama(directory, seed=0, **overrides):
    torch.manual_seed(seed)
    fields = dict(
        vocab_size=VOCAB,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        rope_theta=5000.0,
        bos_token_id=1,
        eos_token_id=EOS,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**fields, **overrides})).eval()
    with torch.no_grad():  # random norms, so that a wrong RMSNorm gain cannot hide behind the initial ones
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    hf.save_pretrained(directory)
    return hf


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("llama")
    return write_llama(directory), directory


@pytest.fixture(scope="module")
def model(hf_checkpoint):
    return GPT.from_pretrained(hf_checkpoint[1])


def prompt(batch=1, length=6, seed=0):
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_config_is_llama_style(model):
    c = model.config
    assert (c.norm, c.positional, c.gated_ffn, c.activation, c.num_kv_heads) == ("rmsnorm", "rope", True, "silu", 2)
    assert c.rope_theta == 5000.0 and not c.tie_embeddings
    assert model.layers[0].self_attn.qkv_proj.weight.shape == (48 + 2 * 2 * 8, 48)  # Q: 6 heads, K and V: 2 heads
    assert model.layers[0].ffn.fc1.weight.shape == (2 * 80, 48)  # [W_gate; W_up]


@pytest.mark.parametrize(
    "overrides",
    [{}, {"num_key_value_heads": 6}, {"num_key_value_heads": 1, "tie_word_embeddings": True}, {"attention_bias": True}],
)
def test_logits_match_transformers(tmp_path, overrides):
    hf = write_llama(tmp_path, seed=1, **overrides)
    if overrides.get("attention_bias"):
        with torch.no_grad():
            for name, p in hf.named_parameters():
                if name.endswith("bias"):
                    p.normal_()
        hf.save_pretrained(tmp_path)
    model = GPT.from_pretrained(tmp_path)
    ids = prompt(2, 20)
    with torch.no_grad():
        assert (hf(ids).logits - model(ids)).abs().max() <= 1e-4
        out = model(ids, output_attentions=True)  # the reference path, GQA by repeating K and V
        ours, attentions = out.logits, out.attentions
        assert (hf(ids).logits - ours).abs().max() <= 1e-4
    assert attentions[0].shape == (2, 6, 20, 20)


def test_left_padded_logits_match_transformers(hf_checkpoint, model):
    assert left_padded_logits_difference(hf_checkpoint[0], model, prompt(2, 9)) <= 1e-4


@pytest.mark.parametrize("options", [{}, {"num_beams": 4}, {"repetition_penalty": 1.3, "no_repeat_ngram_size": 2}])
def test_decoding_matches_transformers(hf_checkpoint, model, options):
    hf, _ = hf_checkpoint
    ids = prompt()
    kwargs = dict(max_new_tokens=24, eos_token_id=None, pad_token_id=0, **options)
    assert torch.equal(model.generate(ids, **kwargs), hf.generate(ids, do_sample=False, **kwargs))


@pytest.mark.parametrize("num_beams", [1, 3])
def test_batched_left_padded_generation_equals_one_by_one(hf_checkpoint, model, num_beams):
    rows = [prompt(1, n, seed=n)[0] for n in (7, 5, 3)]
    options = dict(max_new_tokens=12, num_beams=num_beams, eos_token_id=5, pad_token_id=0)
    check_batched_generation(hf_checkpoint[0], model, rows, **options)


@pytest.mark.cpu_class
@pytest.mark.parametrize("precision", PRECISIONS)
def test_greedy_decoding_routes_agree(model, precision):
    """Cache / no cache, batched / alone, packed / plain weights: the same scores and greedy tokens, in each
    precision (tests/equivalence.py says what "the same" means there)."""
    rows = [prompt(1, n, seed=n)[0] for n in (7, 5, 3)]
    check_decoding_equivalences(in_precision(model, precision), precision, rows, max_new_tokens=12, eos_token_id=None)


@pytest.mark.parametrize("options", [{}, {"num_beams": 3}, {"do_sample": True, "top_k": 10, "seed": 3}])
def test_cache_equivalence(model, options):
    """Float32: with the cache and without, token for token, also for beams and sampling."""
    ids = prompt(2, 5)
    with_cache = model.generate(ids, max_new_tokens=25, eos_token_id=None, **options)
    without = model.generate(ids, max_new_tokens=25, eos_token_id=None, use_cache=False, **options)
    assert torch.equal(with_cache, without)


def test_cache_is_sized_by_kv_heads(model):
    cache = model.make_cache(3, 10)
    assert cache.keys.shape == (2, 3, 2, 10, 8)  # layers, batch, kv heads (not 6 query heads), length, head_dim


def test_packed_weights_give_the_same_tokens(model):
    ids = prompt(4, 5)
    packed = model.generate(ids, max_new_tokens=15, eos_token_id=None, pack_weights=True)
    assert torch.equal(packed, model.generate(ids, max_new_tokens=15, eos_token_id=None, pack_weights=False))


@pytest.mark.parametrize("tie", [False, True])
def test_export_round_trip_opens_in_transformers(tmp_path, tie):
    config = GPTConfig.llama(
        vocab_size=VOCAB,
        max_seq_length=32,
        d_model=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        d_ff=40,
        tie_embeddings=tie,
        rope_theta=500.0,
    )
    model = GPT(config).eval()
    model.save_pretrained(tmp_path, format="hf")
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        assert (hf(ids).logits - model(ids)).abs().max() <= 1e-5
    again = GPT.from_pretrained(tmp_path)
    assert again.config == model.config
    assert torch.equal(again(ids), model(ids))


def test_native_round_trip(tmp_path, model):
    model.save_pretrained(tmp_path)
    assert torch.equal(GPT.from_pretrained(tmp_path)(prompt()), model(prompt()))


def test_bfloat16(model, hf_checkpoint):
    bf16 = GPT.from_pretrained(hf_checkpoint[1], dtype=torch.bfloat16)
    ids = prompt(2, 8)
    assert (bf16(ids).float() - model(ids)).abs().max() < 0.1
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # rotary angles stay float32 under autocast
        autocast = model(ids)
    assert autocast.dtype == torch.bfloat16 and (autocast.float() - model(ids)).abs().max() < 0.1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope type 'linear'"),
        ({"hidden_act": "gelu"}, "activation 'gelu'"),
        ({"head_dim": 16}, "head_dim=16"),
    ],
)
def test_unsupported_llama_options_are_refused(tmp_path, overrides, message):
    import json

    write_llama(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(overrides)
    if "rope_scaling" in overrides:  # transformers 5 writes the rope settings here; the old key must decide
        config.pop("rope_parameters", None)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        GPT.from_pretrained(tmp_path)


def test_gpt2_style_model_is_not_saved_as_llama_and_config_checks(tmp_path):
    rope_only = GPT(GPTConfig(vocab_size=20, max_seq_length=8, d_model=8, num_layers=1, num_heads=2, positional="rope"))
    with pytest.raises(ValueError, match="only a Llama-style GPT"):
        rope_only.save_pretrained(tmp_path, format="hf")
    with pytest.raises(ValueError, match="num_kv_heads"):
        GPTConfig.llama(d_model=32, num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="unknown norm"):
        GPTConfig(norm="batchnorm")
    with pytest.raises(ValueError, match="even head dimension"):
        GPTConfig.llama(d_model=36, num_heads=4)


def test_incomplete_gguf_metadata_is_refused(tmp_path):
    from glassformer.checkpoints.gguf import gguf_config

    (tmp_path / "broken.gguf").write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ValueError, match="not a readable GGUF file"):
        GPT.from_pretrained(tmp_path / "broken.gguf")

    with pytest.raises(ValueError, match="architecture 'gpt2'"):
        gguf_config({"general.architecture": "gpt2"}, set())
    with pytest.raises(ValueError, match="lacks the metadata llama.block_count"):
        gguf_config({"general.architecture": "llama", "llama.embedding_length": 8, "llama.attention.head_count": 2,
                     "llama.feed_forward_length": 16}, set())  # fmt: skip
