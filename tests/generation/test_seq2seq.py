import math

import pytest
import torch
from equivalence import PRECISIONS, assert_close_in, assert_same_greedy_tokens, in_precision

from glassformer import Transformer, TransformerConfig
from glassformer.generation.search import generate
from glassformer.generation.seq2seq import SourceConditionedDecoder, translate_ids

PAD, BOS, EOS = 0, 1, 2


def make_model(norm_first=True, seed=0, **fields):
    torch.manual_seed(seed)
    config = TransformerConfig(
        src_vocab_size=30, tgt_vocab_size=30, d_model=32, num_layers=2, num_heads=4, d_ff=64, max_seq_length=48,
        dropout=0.0, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, norm_first=norm_first, **fields,
    )  # fmt: skip
    model = Transformer(config).eval()
    if config.positional == "relative":  # a relative bias starts at zero: make it matter
        with torch.no_grad():
            for stack in (model.encoder, model.decoder):
                stack.relative_bias.embedding.weight.normal_(std=1.0)
    return model


# every option of the shared block the seq2seq model takes, one at a time and as T5 and Llama combine them
OPTIONS = {
    "rope": dict(positional="rope"),
    "learned": dict(positional="learned"),
    "relative": dict(positional="relative", relative_buckets=8, relative_max_distance=12),
    "rmsnorm": dict(norm="rmsnorm"),
    "grouped_query": dict(num_kv_heads=2),
    "multi_query": dict(num_kv_heads=1),
    "gated_silu": dict(gated_ffn=True, activation="silu"),
    "head_dim": dict(head_dim=16),
    "unscaled_logits": dict(attention_scale=1.0),
    "no_bias": dict(bias=False),
    "llama": dict(norm="rmsnorm", positional="rope", gated_ffn=True, activation="silu", bias=False, num_kv_heads=2),
    "t5": dict(norm="rmsnorm", positional="relative", attention_scale=1.0, bias=False, gated_ffn=True,
               activation="gelu_tanh", scale_embeddings=False, scale_output=True),
}  # fmt: skip


def full_pass_scores(model, src):
    """The scores of the next target token after ``[BOS] + chosen``, by the full pass (for near-tie checks)."""

    def scores(chosen):
        ys = torch.tensor([[BOS, *chosen]])
        causal = torch.ones(ys.size(1), ys.size(1), dtype=torch.bool).tril()
        with torch.no_grad():
            return model(src, ys, tgt_mask=causal)[0, -1]

    return scores


def greedy_by_full_recompute(model, src, max_length):
    """Greedy decoding without any cache: the whole prefix through the whole model at every step (causal mask
    only: a random model may emit the padding id, and what it emitted stays visible, as in the cache)."""
    ys = torch.tensor([[BOS]])
    while ys.size(1) < max_length:
        causal = torch.ones(ys.size(1), ys.size(1), dtype=torch.bool).tril()
        token = model(src, ys, tgt_mask=causal)[0, -1].argmax().item()
        ys = torch.cat([ys, torch.tensor([[token]])], dim=1)
        if token == EOS:
            break
    out = ys[0, 1:].tolist()
    return out[: out.index(EOS)] if EOS in out else out


@pytest.mark.cpu_class
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("norm_first", [True, False])
def test_cached_batched_greedy_equals_full_recompute_per_sentence(norm_first, precision):
    """A padded batch through the cache gives each sentence the greedy tokens that the full pass gives it alone, in
    each precision (near-ties aside: tests/equivalence.py)."""
    model = in_precision(make_model(norm_first), precision)
    src = torch.randint(3, 30, (3, 7))
    src[1, 4:] = PAD  # a shorter, padded source
    outputs = translate_ids(model, src, num_beams=1, max_len_a=1.0, max_len_b=5)
    for row in range(3):
        alone = src[row : row + 1, : int((src[row] != PAD).sum())]
        expected = greedy_by_full_recompute(model, alone, max_length=1 + 7 + 5)
        assert_same_greedy_tokens(full_pass_scores(model, alone), outputs[row], expected, precision, 2, f"row {row}")


@pytest.mark.cpu_class
@pytest.mark.parametrize("precision", PRECISIONS)
def test_incremental_decoder_logits_equal_the_full_pass(precision):
    model = in_precision(make_model(), precision)
    src, tgt = torch.randint(3, 30, (2, 6)), torch.randint(3, 30, (2, 5))
    with torch.no_grad():
        full = model(src, tgt)
        decoder = SourceConditionedDecoder(model, src)
        cache = decoder.make_cache(2, 8)
        steps = [decoder(tgt[:, i : i + 1], cache=cache) for i in range(5)]
    assert_close_in(precision, model.config.num_layers, torch.cat(steps, dim=1), full)


@pytest.mark.parametrize("option", OPTIONS)
def test_every_block_option_decodes_with_the_cache_as_without(option):
    model = make_model(seed=2, **OPTIONS[option])
    src, tgt = torch.randint(3, 30, (2, 9)), torch.randint(3, 30, (2, 14))
    src[1, 5:] = PAD  # the second source is padded: the cache must keep its mask
    full = model(src, tgt)
    decoder = SourceConditionedDecoder(model, src)
    cache = decoder.make_cache(2, 16)
    with torch.no_grad():  # a prompt of 3 tokens at once, then one token a step: offsets 3, 4, ...
        steps = [decoder(tgt[:, :3], cache=cache)] + [decoder(tgt[:, i : i + 1], cache=cache) for i in range(3, 14)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-4, rtol=1e-4)
    outputs = translate_ids(model, src, num_beams=1, max_len_a=1.0, max_len_b=4)
    for row in range(2):
        alone = src[row : row + 1, : int((src[row] != PAD).sum())]
        assert outputs[row] == greedy_by_full_recompute(model, alone, max_length=1 + 9 + 4)


def test_beam_of_one_is_greedy():
    model = make_model(seed=1)
    src = torch.randint(3, 30, (4, 9))
    assert translate_ids(model, src, num_beams=1) == translate_ids(model, src, num_beams=1, length_penalty=2.0)
    from glassformer.generation import search
    from glassformer.generation.config import GenerationConfig
    from glassformer.generation.sampler import Sampling
    from glassformer.generation.step import choose_step

    # beam search with one beam keeps the single best continuation at every step, as greedy does
    decoder = SourceConditionedDecoder(model, src, copies=1)
    start = torch.full((4, 1), BOS)
    greedy = generate(decoder, start, max_length=20, eos_token_id=EOS, pad_token_id=PAD)
    config = GenerationConfig(num_beams=1, eos_token_id=EOS, pad_token_id=PAD)
    beam = search.beam_search(decoder, choose_step(decoder), start, None, config, 20, Sampling.of([config] * 4))

    def cut(row):
        return row[: row.index(EOS) + 1] if EOS in row else row

    for g, b in zip(greedy.tolist(), beam.tolist(), strict=True):
        assert cut(g) == cut(b)


class TableModel(torch.nn.Module):
    """A toy 'decoder' whose next-token distribution depends only on the last token: a lookup table."""

    def __init__(self, table: dict[int, dict[int, float]], vocab: int = 6):
        super().__init__()
        self.config = type("Config", (), {"vocab_size": vocab, "max_seq_length": 10})()
        self.logits = torch.full((vocab, vocab), -30.0)
        for last, following in table.items():
            for token, p in following.items():
                self.logits[last, token] = math.log(p)

    def make_cache(self, batch, max_length):
        return None

    def forward(self, ids, attention_mask=None, cache=None, last_token_only=False):
        return self.logits[ids[:, -1]][:, None]


def log_prob(model, sequence):
    lp = model.logits.log_softmax(-1)
    return sum(lp[a, b].item() for a, b in zip(sequence, sequence[1:], strict=False))


def test_beam_search_finds_a_better_hypothesis_than_greedy():
    # after BOS: A (0.6) or B (0.4); after A: C, D or E (1/3 each), then EOS; after B: EOS at once
    A, B, C, D, E = 3, 4, 5, 6, 7
    third = 1 / 3
    table = {BOS: {A: 0.6, B: 0.4}, A: {C: third, D: third, E: third}, B: {EOS: 1.0}, C: {EOS: 1.0}}
    model = TableModel(table, vocab=8)
    start = torch.tensor([[BOS]])
    greedy = generate(model, start, max_length=6, eos_token_id=EOS, use_cache=False)[0].tolist()
    beam = generate(model, start, max_length=6, num_beams=2, eos_token_id=EOS, use_cache=False)[0].tolist()
    assert greedy == [BOS, A, C, EOS] and beam == [BOS, B, EOS]
    assert log_prob(model, beam) == pytest.approx(math.log(0.4), abs=1e-4)
    assert log_prob(model, greedy) == pytest.approx(math.log(0.6 / 3), abs=1e-4)
    assert log_prob(model, beam) > log_prob(model, greedy)


def test_length_penalty_as_documented():
    # short: [EOS] with log(0.5) = -0.69; long: [A, EOS] with log(0.5) + log(0.9) = -0.80
    A = 3
    model = TableModel({BOS: {EOS: 0.5, A: 0.5}, A: {EOS: 0.9, 4: 0.1}, 4: {EOS: 1.0}})
    start = torch.tensor([[BOS]])

    def run(length_penalty):
        kwargs = dict(max_length=5, num_beams=2, eos_token_id=EOS, length_penalty=length_penalty, use_cache=False)
        return generate(model, start, **kwargs)

    # length_penalty 0: total log-probability alone, the short one wins
    assert run(0.0)[0].tolist() == [BOS, EOS]
    # length_penalty 1: -0.69 / 1 < -0.80 / 2, the long one wins
    assert run(1.0)[0].tolist() == [BOS, A, EOS]


def test_translate_ids_needs_bos_and_eos():
    model = make_model()
    model.config.bos_token_id = None
    with pytest.raises(ValueError, match="no bos_token_id/eos_token_id"):
        translate_ids(model, torch.randint(3, 30, (1, 4)))


@pytest.mark.parametrize("options", [dict(num_beams=0), dict(max_new_tokens=100), dict(eos_token_id=99)])
def test_bad_generation_options_are_refused_before_the_encoder_runs(options, monkeypatch):
    model = make_model().train()
    calls = []
    monkeypatch.setattr(model, "encode", lambda *args: calls.append(args))
    with pytest.raises(ValueError):
        model.generate(torch.randint(3, 30, (2, 5)), **options)
    assert calls == [] and model.training  # no work done, and the model is left as it was
