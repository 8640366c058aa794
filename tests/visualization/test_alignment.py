"""Translation alignments: the beam's hypotheses, each scored and aligned by one teacher-forced pass, checked
against the model's own outputs (`translate --attention`: tests/cli/test_translate_commands.py)."""

import math

import pytest
import torch

from glassformer.generation.config import GenerationConfig
from glassformer.masks import causal_mask
from glassformer.pipelines.translator import Translator
from glassformer.visualization import alignments


@pytest.fixture(scope="module")
def translator(translation_dir):
    return Translator.load(translation_dir)


def test_the_beam_s_hypotheses_come_best_first_and_the_first_is_the_translation(translator):
    (item,) = alignments(translator, ["the cat sat"], num_beams=4, length_penalty=1.0)
    assert len(item.hypotheses) == 4
    scores = [h.score for h in item.hypotheses]
    assert scores == sorted(scores, reverse=True)  # the beam's ranking, recomputed by the teacher-forced pass
    assert len({tuple(h.target_tokens) for h in item.hypotheses}) == 4  # four different hypotheses
    assert item.hypotheses[0].text == translator.translate(["the cat sat"], num_beams=4)[0]


def test_each_hypothesis_is_scored_and_aligned_as_the_model_computes(translator):
    (item,) = alignments(translator, "the cat", num_beams=2, length_penalty=0.6, top=3)
    model, config = translator.model, translator.model.config
    src = torch.tensor([translator.encode_sources(["the cat"])[0]])
    for h in item.hypotheses:
        ids = [translator.target_tokenizer.backend.token_to_id(t) for t in h.target_tokens]
        ids = [config.eos_token_id if i is None else i for i in ids]  # special tokens are shown by name
        tgt = torch.tensor([[config.bos_token_id, *ids[:-1]]])
        out = model(src, tgt, tgt_mask=causal_mask(len(ids)), output_attentions=True)
        log_probs = torch.log_softmax(out.logits[0], -1)
        chosen = [float(log_probs[t, i]) for t, i in enumerate(ids)]
        assert h.log_probability == pytest.approx(sum(chosen), abs=1e-4)
        assert h.score == pytest.approx(sum(chosen) / len(ids) ** 0.6, abs=1e-4)
        assert h.probabilities == pytest.approx([math.exp(c) for c in chosen], abs=1e-5)
        # row t: the cross-attention of the query that wrote token t; each row sums to 1
        assert h.weights.shape == (2, 2, len(ids), src.size(1))
        torch.testing.assert_close(h.weights[1], out.cross_attentions[1][0], atol=1e-6, rtol=0)
        torch.testing.assert_close(h.weights.sum(-1), torch.ones(2, 2, len(ids)), atol=1e-5, rtol=0)
        for t, step in enumerate(h.alternatives):
            assert len(step) == 3 and [p for _, p in step] == sorted((p for _, p in step), reverse=True)
            assert step[0][1] == pytest.approx(float(log_probs[t].exp().max()), abs=1e-6)


def test_num_return_sequences_is_checked_against_the_beams(translator):
    with pytest.raises(ValueError, match="raise num_beams"):
        GenerationConfig(num_beams=2, num_return_sequences=3).validate()
