"""The batched sampler (``glassformer.generation.sampler``) and the constraints it applies: each setting's formula,
per-row settings in one batch, the distribution it draws from, and its refusals."""

import pytest
import torch

from glassformer.generation import sampler
from glassformer.generation.config import GenerationConfig
from glassformer.generation.processors import no_repeat_ngram
from glassformer.generation.sampler import Sampling

INF = float("-inf")


def rows(*configs, generators=None):
    return Sampling.of([GenerationConfig(**c) for c in configs], generators)


def test_temperature_divides_and_top_k_keeps_the_k_highest_with_ties():
    scores = torch.tensor([[1.0, 5.0, 3.0, 3.0, -1.0]] * 3)
    out = sampler.filtered(scores, rows(dict(do_sample=True, temperature=0.5), dict(do_sample=True, top_k=2),
                                        dict(do_sample=True, top_k=10)))  # fmt: skip
    assert out[0].tolist() == (scores[0] * 2).tolist()
    assert out[1].tolist() == [INF, 5.0, 3.0, 3.0, INF] and out[2].tolist() == scores[2].tolist()


@pytest.mark.parametrize("p", [0.1, 0.5, 0.7, 0.9, 0.99, 1.0])
def test_top_p_keeps_the_smallest_set_with_mass_at_least_p(p):
    torch.manual_seed(1)
    scores = torch.randn(3, 20) * 2
    kept = sampler.filtered(scores, rows(*[dict(do_sample=True, top_p=p)] * 3)) != INF
    probs = scores.softmax(-1)
    for row in range(3):
        order = probs[row].argsort(descending=True)
        # the smallest prefix of the sorted probabilities whose mass reaches p
        needed = int((probs[row][order].cumsum(0) < p - 1e-6).sum()) + 1
        expected = torch.zeros(20, dtype=torch.bool)
        expected[order[:needed]] = True
        assert torch.equal(kept[row], expected)
    assert (
        sampler.filtered(torch.tensor([[10.0, 0.0, 0.0]]), rows(dict(do_sample=True, top_p=0.01))) != INF
    ).tolist() == [[True, False, False]]  # always one token


def test_each_row_keeps_its_own_settings_in_one_batch():
    """Top-k then top-p on the top-k's distribution, per row: the batch equals each row alone."""
    torch.manual_seed(2)
    scores = torch.randn(4, 30)
    settings = [dict(do_sample=True, temperature=0.7, top_k=5), dict(do_sample=True, top_p=0.6),
                dict(do_sample=True, temperature=1.3, top_k=8, top_p=0.5), dict()]  # fmt: skip
    batch = sampler.filtered(scores, rows(*settings))
    for i, setting in enumerate(settings[:3]):
        assert torch.equal(batch[i], sampler.filtered(scores[i : i + 1], rows(setting))[0])
    assert torch.equal(batch[3], scores[3])  # greedy: untouched (temperature 1, nothing dropped)


def test_repetition_penalty_as_in_ctrl_per_row():
    history = torch.tensor([[0, 2, 2], [1, 1, 1]])
    logits = torch.tensor([[2.0, 1.0, -3.0, 4.0], [2.0, 1.0, -3.0, 4.0]])
    out = sampler.scores(logits, history, rows(dict(repetition_penalty=2.0), dict(repetition_penalty=4.0)))
    assert out.tolist() == [[1.0, 1.0, -6.0, 4.0], [2.0, 0.25, -3.0, 4.0]]  # seen: positive / p, negative * p


def test_greedy_rows_take_the_argmax_and_sampled_rows_follow_the_distribution():
    """The exponential race draws token i with probability p_i: 20,000 draws of a 4-token distribution land within
    4.5 standard deviations of p_i · n, and a greedy row in the same batch always takes the argmax."""
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    n = 20_000
    scores = probs.log().expand(n, 4)
    settings = [dict(do_sample=True)] * (n - 1) + [dict()]
    tokens = sampler.choose(scores, rows(*settings, generators=[torch.Generator().manual_seed(0)] * n))
    assert tokens[-1] == 0
    counts = torch.bincount(torch.tensor(tokens[:-1]), minlength=4).float()
    expected = probs * (n - 1)
    assert ((counts - expected).abs() <= 4.5 * (expected * (1 - probs)).sqrt()).all(), counts


def test_a_seeded_row_draws_the_same_tokens_whatever_rides_beside_it():
    torch.manual_seed(3)
    scores = torch.randn(3, 50)
    alone = sampler.choose(scores[1:2], rows(dict(do_sample=True), generators=[torch.Generator().manual_seed(9)]))
    batch = sampler.choose(
        scores,
        rows(
            dict(),
            dict(do_sample=True),
            dict(do_sample=True, top_k=3),
            generators=[None, torch.Generator().manual_seed(9), None],
        ),  # fmt: skip
    )
    assert batch[1] == alone[0]


def test_no_repeat_ngram_bans_exactly_the_repeated_ngrams():
    ids = torch.tensor([[1, 2, 3, 1, 2, 4, 1, 2]])
    scores = torch.zeros(1, 6)
    banned = no_repeat_ngram(3)(ids, scores) == INF
    assert banned[0].nonzero().flatten().tolist() == [3, 4]  # "1 2" was followed by 3 and by 4
    banned2 = no_repeat_ngram(2)(ids, scores) == INF  # after "2": 3 and 4 were seen
    assert banned2[0].nonzero().flatten().tolist() == [3, 4]
    assert not (no_repeat_ngram(9)(ids, scores) == INF).any()  # sequence shorter than the n-gram


def test_no_repeat_ngram_per_row():
    ids = torch.tensor([[5, 5, 5], [1, 2, 1]])
    banned = no_repeat_ngram(2)(ids, torch.zeros(2, 6)) == INF
    assert banned[0].nonzero().flatten().tolist() == [5]
    assert banned[1].nonzero().flatten().tolist() == [2]


@pytest.fixture
def three_token_model():
    from glassformer import GPT, GPTConfig

    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=3, max_seq_length=16, d_model=8, num_layers=1, num_heads=2, d_ff=16)).eval()


@pytest.mark.parametrize("num_beams", [1, 2])
def test_decoding_refuses_when_every_token_is_banned(three_token_model, num_beams):
    """Every token of the 3 already in the prompt, no_repeat_ngram_size=1: argmax would silently return 0."""
    with pytest.raises(ValueError, match="no token is allowed"):
        three_token_model.generate(
            torch.tensor([[0, 1, 2]]), max_new_tokens=2, no_repeat_ngram_size=1, num_beams=num_beams
        )


@pytest.mark.parametrize("options", [{}, {"do_sample": True, "seed": 0}, {"num_beams": 2}])
def test_decoding_refuses_nan_scores(three_token_model, options):
    with torch.no_grad():
        three_token_model.layers[0].ffn.fc2.bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="NaN scores"):
        three_token_model.generate(torch.tensor([[0, 1]]), max_new_tokens=2, **options)


@pytest.mark.parametrize("where", [0, 5, 7])
def test_choose_refuses_a_nan_or_an_all_banned_row_only_among_rows_still_decoding(where):
    """One NaN anywhere in a row (first, middle, last token), or every token of a row at -inf, is refused; the same
    in a row that has finished is not looked at; a row with a -inf token beside finite ones decodes."""
    greedy = rows(dict(), dict())
    scores = torch.randn(2, 8)
    scores[1, 2] = INF  # a banned token beside allowed ones
    assert sampler.choose(scores, greedy) == scores.argmax(-1).tolist()
    nan = scores.clone()
    nan[0, where] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN scores"):
        sampler.choose(nan, greedy)
    assert sampler.choose(nan, greedy, torch.tensor([False, True]))[1] == int(scores[1].argmax())
    banned = scores.clone()
    banned[1] = INF
    with pytest.raises(ValueError, match="no token is allowed"):
        sampler.choose(banned, greedy)
    assert sampler.choose(banned, greedy, torch.tensor([True, False]))[0] == int(scores[0].argmax())


def test_presence_and_frequency_penalties_as_openai_defines():
    """s − frequency · count − presence · [count > 0], on the new tokens counted; a row without them unchanged."""
    logits = torch.zeros(2, 5)
    generated = torch.tensor([[1, 1, 3], [0, 0, 0]])
    settings = rows(dict(presence_penalty=0.5, frequency_penalty=1.0), dict())
    out = sampler.scores(logits, None, settings, sampler.token_counts(generated, 5))
    assert out.tolist() == [[0.0, -2.5, 0.0, -1.5, 0.0], [0.0] * 5]
    with pytest.raises(ValueError, match="frequency_penalty"):
        GenerationConfig(frequency_penalty=3.0).validate()


@pytest.mark.parametrize("kernel", ["on", "off"])
@pytest.mark.parametrize("options", [{}, {"repetition_penalty": 1.3}, {"no_repeat_ngram_size": 1}])
def test_beam_candidates_are_the_best_of_every_beam_s_every_token(options, kernel, monkeypatch):
    """Beam search's candidates, taken a beam's best at a time where nothing changes the scores (through the kernel
    ``top_log_probs``, or with it switched off its reference), are the best of all beams × tokens ranked at once (its
    beam's running score plus the token's penalized log-probability); a NaN logit reaches the refusal."""
    if kernel == "off":
        monkeypatch.setenv("GLASSFORMER_KERNELS", "top_log_probs")
    from glassformer.generation.processors import build_processors
    from glassformer.generation.search import beam_candidates

    torch.manual_seed(0)
    batch, beams, vocab = 3, 4, 100
    logits, history = torch.randn(batch * beams, 1, vocab) * 3, torch.randint(0, vocab, (batch * beams, 6))
    config = GenerationConfig(num_beams=beams, **options)
    sampling = Sampling.of([config] * (batch * beams), None, build_processors(config, 2))
    running = torch.randn(batch, beams) * 2
    scores, parent, token = beam_candidates(logits, history, 2, running, sampling)
    log_probs = sampler.scores(logits[:, 0].log_softmax(-1), history, sampling)
    total = (log_probs.view(batch, beams, vocab) + running[..., None]).view(batch, -1)
    expected, index = total.topk(2 * beams)
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-5)
    assert torch.equal(parent, index // vocab) and torch.equal(token, index % vocab)
    logits[5, 0, 17] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN scores"):
        sampler.check(beam_candidates(logits, history, 2, running, sampling)[0])
