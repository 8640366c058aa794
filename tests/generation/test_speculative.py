"""Prompt-lookup speculative decoding (``glassformer.generation.speculative``): the drafts it finds, greedy tokens
identical to plain decoding (float and quantized models, the end token and the length limit inside a block), and
the accept/reject step drawing exactly the sampling distribution."""

import pytest
import torch

from glassformer.generation import sampler
from glassformer.generation.config import GenerationConfig
from glassformer.generation.sampler import Sampling
from glassformer.generation.speculative import AssistantModel, PromptLookup, prompt_lookup, speculative_decode
from glassformer.generation.step import choose_step
from glassformer.models.gpt import GPT, GPTConfig


def test_prompt_lookup_drafts_what_followed_the_latest_match_longest_first():
    sequence = [5, 6, 7, 8, 1, 6, 7, 9, 2, 6, 7]
    assert prompt_lookup(sequence, 3, 2) == [9, 2, 6]  # "6 7" last seen before the tail at index 5
    assert prompt_lookup([1, 2, 3, 4, 2, 3, 9, 3], 2, 2) == [9, 3]  # "9 3" unseen: "3" alone, its latest match
    assert prompt_lookup([1, 2, 3], 4, 3) == [] and prompt_lookup([4], 2, 2) == []


def model(kind: str, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    fields = dict(vocab_size=40, max_seq_length=96, d_model=32, num_layers=2, num_heads=4, d_ff=64, eos_token_id=3)
    config = GPTConfig.llama(**fields, num_kv_heads=2) if kind != "gpt2" else GPTConfig(**fields)
    gpt = GPT(config).eval()
    return gpt.quantize("int4") if kind == "llama-int4" else gpt


@pytest.mark.parametrize("kind", ["gpt2", "llama", "llama-int4"])
@pytest.mark.parametrize("eos", [None, 3])
def test_greedy_tokens_are_plain_greedy_tokens(kind, eos):
    """A prompt that repeats itself (drafts found and accepted) and random models (drafts rejected): the same tokens
    as plain greedy decoding, up to the same end token or length."""
    gpt = model(kind)
    prompts = [torch.tensor([[7, 8, 9, 10, 11, 7, 8, 9, 10, 11, 7, 8, 9]]), torch.randint(4, 40, (1, 12))]
    for ids in prompts:
        with torch.inference_mode():
            plain = gpt.generate(ids, max_new_tokens=40, eos_token_id=eos)
            stats = {}
            config = GenerationConfig(max_new_tokens=40, eos_token_id=eos, prompt_lookup_num_tokens=5)
            sampling = Sampling.of([config])
            spec = speculative_decode(gpt, choose_step(gpt), ids, config, ids.size(1) + 40, sampling,
                                      PromptLookup(config), stats=stats)  # fmt: skip
        assert torch.equal(spec, plain), (kind, eos)
        assert torch.equal(spec, gpt.generate(ids, max_new_tokens=40, eos_token_id=eos, prompt_lookup_num_tokens=5))
        assert stats["passes"] <= plain.size(1) - ids.size(1)


@pytest.mark.parametrize("draft", [0, 3])  # the most likely token, and an unlikely one
def test_the_accept_reject_step_draws_exactly_the_sampling_distribution(draft):
    """20,000 verifications of a drafted token against p = (0.5, 0.3, 0.15, 0.05): the tokens come out with p's
    frequencies (within 4.5 standard deviations), whatever was drafted."""
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    settings = Sampling.of([GenerationConfig(do_sample=True)], [torch.Generator().manual_seed(draft)])
    n = 20_000
    tokens = [sampler.verify(probs.log(), settings, draft)[1] for _ in range(n)]
    counts = torch.bincount(torch.tensor(tokens), minlength=4).float()
    expected = probs[0] * n
    assert ((counts - expected).abs() <= 4.5 * (expected * (1 - probs[0])).sqrt()).all(), counts


def test_sampled_decoding_with_lookup_is_reproducible_and_in_the_vocabulary():
    gpt = model("llama")
    ids = torch.tensor([[7, 8, 9, 10, 11, 7, 8, 9, 10, 11, 7, 8]])
    options = dict(max_new_tokens=30, do_sample=True, temperature=0.7, seed=5, prompt_lookup_num_tokens=4)
    first = gpt.generate(ids, **options)
    assert torch.equal(first, gpt.generate(ids, **options)) and int(first.max()) < 40


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_an_assistant_model_drafts_and_the_tokens_stay_the_model_s(kind):
    """The model quantized to int4 drafting for its float self (and an unrelated random model, whose drafts are
    mostly refused): greedy tokens equal plain decoding; most int4 drafts are kept; sampling is reproducible."""
    gpt = model(kind)
    quantized = model(kind).quantize("int4", 32)
    stranger = model(kind, seed=9)
    ids = torch.randint(4, 40, (1, 10))
    with torch.inference_mode():
        plain = gpt.generate(ids, max_new_tokens=30, eos_token_id=None)
        for assistant in (quantized, stranger):
            drafted = gpt.generate(ids, max_new_tokens=30, eos_token_id=None, assistant_model=assistant)
            assert torch.equal(drafted, plain)
        config = GenerationConfig(max_new_tokens=30, num_assistant_tokens=4)
        stats = {}
        speculative_decode(gpt, choose_step(gpt), ids, config, 40, Sampling.of([config]),
                           AssistantModel(quantized, 4, 40), stats=stats)  # fmt: skip
        assert stats["accepted"] >= 0.5 * stats["drafted"], stats
        options = dict(max_new_tokens=20, do_sample=True, seed=3, assistant_model=quantized)
        assert torch.equal(gpt.generate(ids, **options), gpt.generate(ids, **options))


def test_what_lookup_decoding_refuses():
    gpt = model("gpt2")
    with pytest.raises(ValueError, match="one sequence at a time"):
        gpt.generate(torch.randint(4, 40, (2, 5)), max_new_tokens=4, prompt_lookup_num_tokens=3)
    with pytest.raises(ValueError, match="num_beams=1"):
        gpt.generate(torch.randint(4, 40, (1, 5)), max_new_tokens=4, prompt_lookup_num_tokens=3, num_beams=2)
    with pytest.raises(ValueError, match="the assistant model's vocabulary has 80 tokens"):
        other = GPT(GPTConfig(vocab_size=80, max_seq_length=32, d_model=16, num_layers=1, num_heads=2, d_ff=32))
        gpt.generate(torch.randint(4, 40, (1, 5)), max_new_tokens=4, assistant_model=other)
    cache = gpt.make_cache(1, 8)
    cache.advance(3)
    with pytest.raises(ValueError, match="cannot rewind a cache of 3 positions to 5"):
        cache.rewind(5)
