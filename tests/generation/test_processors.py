import math

import pytest
import torch

from glassformer.generation.processors import no_repeat_ngram, repetition_penalty, temperature, top_k, top_p

INF = float("-inf")


def test_temperature_divides():
    scores = torch.tensor([[1.0, -2.0, 4.0]])
    torch.testing.assert_close(temperature(0.5)(None, scores), scores * 2)


def test_top_k_keeps_k_highest_and_ties():
    scores = torch.tensor([[1.0, 5.0, 3.0, 3.0, -1.0]])
    assert top_k(2)(None, scores).tolist() == [[INF, 5.0, 3.0, 3.0, INF]]
    assert top_k(10)(None, scores).tolist() == scores.tolist()


@pytest.mark.parametrize("p", [0.1, 0.5, 0.7, 0.9, 0.99, 1.0])
def test_top_p_keeps_smallest_set_with_mass_at_least_p(p):
    torch.manual_seed(1)
    scores = torch.randn(3, 20) * 2
    kept = top_p(p)(None, scores) != INF
    probs = scores.softmax(-1)
    for row in range(3):
        order = probs[row].argsort(descending=True)
        # the smallest prefix of the sorted probabilities whose mass reaches p
        cumulative = probs[row][order].cumsum(0)
        needed = int((cumulative < p - 1e-6).sum()) + 1
        expected = torch.zeros(20, dtype=torch.bool)
        expected[order[:needed]] = True
        assert torch.equal(kept[row], expected)
        assert probs[row][kept[row]].sum() >= p - 1e-6


def test_top_p_always_keeps_one_token():
    scores = torch.tensor([[10.0, 0.0, 0.0]])
    assert (top_p(0.01)(None, scores) != INF).tolist() == [[True, False, False]]


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


def test_repetition_penalty_as_in_ctrl():
    ids = torch.tensor([[0, 2, 2]])
    scores = torch.tensor([[2.0, 1.0, -3.0, 4.0]])
    out = repetition_penalty(2.0)(ids, scores)
    assert out.tolist() == [[1.0, 1.0, -6.0, 4.0]]  # seen: positive / 2, negative * 2; unseen unchanged


def test_sampling_follows_the_processed_distribution():
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    processed = top_p(0.8)(None, scores)
    probs = processed.softmax(-1)
    assert math.isclose(probs[0, 0].item(), 0.5 / 0.8, rel_tol=1e-5) and probs[0, 2:].sum() == 0


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
