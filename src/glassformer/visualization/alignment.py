"""Translation alignments: which source tokens the decoder attended to as it wrote each target token, beside the
beam's choices.

``alignments(model, texts)`` translates each text with beam search and keeps the beam's ``num_beams`` finished
hypotheses, best first. Each hypothesis is then run once more through the model, teacher-forced (decoder input
``BOS y_1 … y_{n-1}``, one pass), which gives for every target token ``y_t``

    weights[layer, head, t, s]   the cross-attention of the query that produced y_t (decoder input y_{t-1}) on
                                 source token s: row t is the alignment of y_t; every row sums to 1
    probability                  p(y_t | y_<t, source), the model's softmax at that step
    alternatives                 the ``top`` most probable tokens at that step with their probabilities

and the hypothesis's score as beam search ranked it: ``sum_t log p(y_t) / n^length_penalty`` (n generated tokens,
EOS included). ``alignment_html`` draws them as one self-contained page; ``glassformer translate --attention``
writes it, and ``alignment_view`` shows it inline in a notebook.
"""

from __future__ import annotations

import dataclasses
import html
import json
from importlib import resources
from pathlib import Path

import torch

from glassformer import runtime
from glassformer.generation.seq2seq import generate_seq2seq, target_length
from glassformer.masks import causal_mask
from glassformer.visualization.attention import _check_length, readable_tokens
from glassformer.visualization.html import quantize


@dataclasses.dataclass
class Hypothesis:
    """One finished hypothesis of the beam: its target tokens (EOS included when it ended with one), its text,
    its score and per-token alignment, probability and alternatives."""

    text: str
    target_tokens: list[str]
    target_special: list[bool]
    score: float  # sum of log-probabilities / length^length_penalty: the beam's ranking
    log_probability: float
    weights: torch.Tensor  # (layers, heads, targets, sources), float32
    probabilities: list[float]  # p(y_t), one per target token
    alternatives: list[list[tuple[str, float]]]  # per target token: the `top` most probable tokens at that step


@dataclasses.dataclass
class Alignment:
    """A source sentence and the beam's finished hypotheses for it, best first."""

    source: str
    source_tokens: list[str]
    source_special: list[bool]
    hypotheses: list[Hypothesis]
    length_penalty: float


def alignments(
    model,
    texts: list[str],
    num_beams: int = 4,
    length_penalty: float = 1.0,
    top: int = 5,
    device: str | None = None,
    precision: str | None = None,
) -> list[Alignment]:
    """Translate ``texts`` with ``model`` (a ``Translator``, or a `train translate` run / model directory loaded on
    ``device`` in ``precision``) and return each one's ``Alignment`` with ``num_beams`` hypotheses."""
    from glassformer.pipelines.translator import Translator

    if isinstance(texts, str):
        texts = [texts]
    if not texts:
        raise ValueError("nothing to align; give at least one source sentence")
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    translator = model if isinstance(model, Translator) else Translator.load(model, device, precision)
    return [_align(translator, text, num_beams, length_penalty, top) for text in texts]


def _align(translator, text: str, num_beams: int, length_penalty: float, top: int) -> Alignment:
    model, config = translator.model, translator.model.config
    source_ids = translator.encode_sources([text])[0]
    _check_length(source_ids, "source text")
    where = runtime.module_device(model)
    src = torch.tensor([source_ids], device=where)
    rows = generate_seq2seq(
        model, src, max_length=target_length(model, src), num_beams=num_beams, length_penalty=length_penalty,
        num_return_sequences=num_beams,
    )  # fmt: skip
    hypotheses = []
    for row in rows[:, 1:].tolist():  # without the start token
        ids = row[: row.index(config.eos_token_id) + 1] if config.eos_token_id in row else row
        hypotheses.append(_hypothesis(translator, src, ids, length_penalty, top))
    source_tokens, source_special = readable_tokens(translator.source_tokenizer, source_ids)
    return Alignment(text, source_tokens, source_special, hypotheses, length_penalty)


def _hypothesis(translator, src: torch.Tensor, ids: list[int], length_penalty: float, top: int) -> Hypothesis:
    """Score and align one hypothesis ``ids`` (y_1 … y_n) in one teacher-forced pass."""
    model, tokenizer = translator.model, translator.target_tokenizer
    decoder_input = torch.tensor([[model.config.bos_token_id, *ids[:-1]]], device=src.device)
    with torch.no_grad():  # causal only, as while decoding: a generated token is never padding
        out = model(src, decoder_input, tgt_mask=causal_mask(len(ids), src.device), output_attentions=True)
    log_probs = torch.log_softmax(out.logits[0].float(), -1)  # (n, vocab)
    chosen = log_probs.gather(-1, torch.tensor(ids, device=log_probs.device)[:, None])[:, 0]
    best = log_probs.topk(min(top, log_probs.size(-1)))
    alternatives = [
        [(readable_tokens(tokenizer, [i])[0][0], p) for i, p in zip(index, values, strict=True)]
        for index, values in zip(best.indices.tolist(), best.values.exp().tolist(), strict=True)
    ]
    target_tokens, target_special = readable_tokens(tokenizer, ids)
    log_probability = float(chosen.sum())
    return Hypothesis(
        text=tokenizer.decode(ids, skip_special_tokens=True).strip(),
        target_tokens=target_tokens,
        target_special=target_special,
        score=log_probability / len(ids) ** length_penalty,
        log_probability=log_probability,
        weights=torch.cat([w.float().cpu() for w in out.cross_attentions]).detach(),
        probabilities=chosen.exp().tolist(),
        alternatives=alternatives,
    )


def page_data(items: list[Alignment]) -> dict:
    """What the alignment page's script reads: per sentence its source tokens and hypotheses, weights as base64
    bytes (round(weight × 255)) like the attention page's."""
    import base64

    return {
        "sentences": [
            {
                "source": item.source,
                "sourceTokens": item.source_tokens,
                "specialSources": item.source_special,
                "lengthPenalty": item.length_penalty,
                "hypotheses": [
                    {
                        "text": h.text,
                        "targetTokens": h.target_tokens,
                        "specialTargets": h.target_special,
                        "score": round(h.score, 4),
                        "logProbability": round(h.log_probability, 4),
                        "layers": h.weights.size(0),
                        "heads": h.weights.size(1),
                        "weights": base64.b64encode(quantize(h.weights)).decode("ascii"),
                        "probabilities": [round(p, 4) for p in h.probabilities],
                        "alternatives": [[[token, round(p, 4)] for token, p in step] for step in h.alternatives],
                    }
                    for h in item.hypotheses
                ],
            }
            for item in items
        ]
    }


def alignment_html(items: list[Alignment], title: str = "Translation alignments") -> str:
    """The alignment page as one self-contained string (style, script and data inline; nothing fetched)."""
    if not items:
        raise ValueError("no alignment to draw; pass at least one Alignment")
    files = resources.files("glassformer.visualization")
    template = files.joinpath("alignment_page.html").read_text(encoding="utf-8")
    data = json.dumps(page_data(items), ensure_ascii=False).replace("</", "<\\/")  # never closes the <script>
    parts = {
        "__TITLE__": html.escape(title),
        "__CSS__": files.joinpath("attention_page.css").read_text(encoding="utf-8"),
        "__JS__": files.joinpath("alignment_page.js").read_text(encoding="utf-8"),
    }
    for key, value in parts.items():
        template = template.replace(key, value)
    return template.replace("__DATA__", data)


def save_alignment_html(items: list[Alignment], path: str | Path, title: str = "Translation alignments") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(alignment_html(items, title), encoding="utf-8")
    return path
