"""GPT against transformers' GPT2LMHeadModel on random checkpoints that the tests write themselves."""

import pytest
import torch
from decoder_checks import check_batched_generation, check_decoding_equivalences, left_padded_logits_difference
from equivalence import PRECISIONS, in_precision

from glassformer.models.gpt import GPT, GPTConfig

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

VOCAB = 60
EOS = VOCAB - 1


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=48, n_embd=32, n_layer=2, n_head=4, bos_token_id=EOS, eos_token_id=EOS
    )
    hf = transformers.GPT2LMHeadModel(config).eval()
    directory = tmp_path_factory.mktemp("gpt2")
    hf.save_pretrained(directory)
    return hf, directory


@pytest.fixture(scope="module")
def model(hf_checkpoint):
    return GPT.from_pretrained(hf_checkpoint[1])


def prompt(batch=1, length=6, seed=0):
    return torch.randint(1, EOS, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_logits_match_transformers(hf_checkpoint, model):
    hf, _ = hf_checkpoint
    ids = prompt(2, 12)
    with torch.no_grad():
        assert (hf(ids).logits - model(ids)).abs().max() <= 1e-4


def test_left_padded_logits_match_transformers(hf_checkpoint, model):
    assert left_padded_logits_difference(hf_checkpoint[0], model, prompt(2, 9)) <= 1e-4


@pytest.mark.parametrize("eos", [None, EOS, 3])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"num_beams": 4},
        {"num_beams": 4, "length_penalty": 0.5, "no_repeat_ngram_size": 2},
        {"repetition_penalty": 1.3},
        {"no_repeat_ngram_size": 2},
    ],
)
def test_decoding_matches_transformers(hf_checkpoint, model, eos, options):
    hf, _ = hf_checkpoint
    ids = prompt()
    kwargs = dict(max_new_tokens=20, eos_token_id=eos, pad_token_id=0, **options)
    theirs = hf.generate(ids, do_sample=False, **kwargs)
    assert torch.equal(model.generate(ids, **kwargs), theirs)


@pytest.mark.parametrize("num_beams", [1, 4])
def test_batched_left_padded_generation_equals_one_by_one(hf_checkpoint, model, num_beams):
    rows = [prompt(1, n, seed=n)[0] for n in (7, 5, 3)]
    options = dict(max_new_tokens=12, num_beams=num_beams, eos_token_id=3, pad_token_id=0)
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
    with_cache = model.generate(ids, max_new_tokens=25, **options)
    without = model.generate(ids, max_new_tokens=25, use_cache=False, **options)
    assert torch.equal(with_cache, without)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_packed_weights_give_the_same_tokens(model, num_beams):
    ids = prompt(4, 5)
    packed = model.generate(ids, max_new_tokens=15, num_beams=num_beams, pack_weights=True)
    plain = model.generate(ids, max_new_tokens=15, num_beams=num_beams, pack_weights=False)
    assert torch.equal(packed, plain)


def test_sampling_with_seed_is_reproducible(model):
    ids = prompt()
    options = dict(max_new_tokens=20, do_sample=True, temperature=0.7, top_k=50, top_p=0.95, seed=7)
    first = model.generate(ids, **options)
    assert torch.equal(first, model.generate(ids, **options))
    others = {tuple(model.generate(ids, **{**options, "seed": s})[0].tolist()) for s in range(5)}
    assert len(others) > 1


def test_export_round_trip_opens_in_transformers(tmp_path):
    config = GPTConfig(vocab_size=80, max_seq_length=32, d_model=24, num_layers=2, num_heads=3, d_ff=48, eos_token_id=1)
    model = GPT(config).eval()
    model.save_pretrained(tmp_path, format="hf")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 80, (2, 10))
    with torch.no_grad():
        assert (hf(ids).logits - model(ids)).abs().max() <= 1e-5
    again = GPT.from_pretrained(tmp_path)
    assert torch.equal(again(ids), model(ids))


def test_native_round_trip_and_bin_weights(tmp_path, hf_checkpoint, model):
    model.save_pretrained(tmp_path / "native")
    assert torch.equal(GPT.from_pretrained(tmp_path / "native")(prompt()), model(prompt()))
    hf, _ = hf_checkpoint
    hf.save_pretrained(tmp_path / "bin", safe_serialization=False)
    if (tmp_path / "bin" / "pytorch_model.bin").exists():
        assert torch.equal(GPT.from_pretrained(tmp_path / "bin")(prompt()), model(prompt()))


def test_local_hf_cache_by_name(tmp_path, monkeypatch, hf_checkpoint):
    import shutil

    snapshot = tmp_path / "hub" / "models--someone--tiny-gpt2" / "snapshots" / "abc123"
    shutil.copytree(hf_checkpoint[1], snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert GPT.from_pretrained("someone/tiny-gpt2").config.vocab_size == VOCAB
    with pytest.raises(FileNotFoundError, match="local Hugging Face cache"):
        GPT.from_pretrained("someone/missing")


def test_other_architecture_is_refused(tmp_path):
    from glassformer import Transformer, TransformerConfig

    Transformer(
        TransformerConfig(src_vocab_size=10, tgt_vocab_size=10, d_model=8, num_layers=1, num_heads=2, d_ff=16)
    ).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model_type"):
        GPT.from_pretrained(tmp_path)


def test_bfloat16_weights(hf_checkpoint):
    model = GPT.from_pretrained(hf_checkpoint[1])
    bf16 = GPT.from_pretrained(hf_checkpoint[1], dtype=torch.bfloat16)
    assert bf16.lm_head.weight.dtype == torch.bfloat16 and bf16.make_cache(1, 8).keys.dtype == torch.bfloat16
    ids = prompt(2, 8)
    assert (bf16(ids).float() - model(ids)).abs().max() < 0.05
    assert bf16.generate(ids, max_new_tokens=5).shape == (2, 13)


def test_causality_and_batch_invariance(model):
    ids = prompt(1, 10)
    base = model(ids)
    changed = ids.clone()
    changed[0, 6:] = prompt(1, 4, seed=9)[0]
    torch.testing.assert_close(model(changed)[:, :6], base[:, :6], atol=1e-5, rtol=0)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], 1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones_like(ids)], 1)
    torch.testing.assert_close(model(padded, attention_mask=mask)[:, 3:], base, atol=1e-5, rtol=0)


def test_cache_and_mask_errors(model):
    cache = model.make_cache(1, 8)
    model(prompt(1, 6), cache=cache)
    with pytest.raises(ValueError, match="holds 8 positions"):
        model(prompt(1, 3), cache=cache)
    assert cache.nbytes == 2 * 2 * 1 * 4 * 8 * 8 * 4  # keys + values: layers, batch, heads, length, head_dim, fp32
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        model(prompt(1, 4), attention_mask=torch.ones(1, 5))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: dict(input_ids=torch.zeros(1, 0, dtype=torch.long)), "prompt is empty"),
        (lambda: dict(input_ids=torch.ones(1, 48, dtype=torch.long)), "context is 48"),
        (lambda: dict(input_ids=torch.ones(1, 40, dtype=torch.long), max_new_tokens=20), "exceeds the model's context"),
        (lambda: dict(input_ids=torch.ones(1, 4, dtype=torch.long), top_p=1.5), r"top_p must be a number in \(0, 1\]"),
        (lambda: dict(input_ids=torch.ones(1, 4, dtype=torch.long), top_p=0.0), "top_p"),
        (lambda: dict(input_ids=torch.ones(1, 4, dtype=torch.long), do_sample=True, temperature=0), "temperature"),
        (
            lambda: dict(input_ids=torch.ones(1, 4, dtype=torch.long), num_beams=0),
            "num_beams must be a positive integer",
        ),
        (lambda: dict(input_ids=torch.ones(1, 4, dtype=torch.long) * VOCAB), "outside the vocabulary"),
        (lambda: dict(input_ids=torch.ones(4, dtype=torch.long)), "batch dimension"),
    ],
)
def test_bad_generation_input(model, make, message):
    with pytest.raises(ValueError, match=message):
        model.generate(**make())
