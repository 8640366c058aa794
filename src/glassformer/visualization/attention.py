"""Attention weights of a model on a text, with readable tokens: what the attention page and figures draw.

``attention_views(model_path, text)`` loads any glassformer model (a GPT, GPT-2, Llama or GGUF checkpoint, a
BERT encoder or classifier, a translation run) and runs it once on the text through the reference attention path,
which returns every layer's weights. Each ``AttentionView`` is one kind of attention with its query and key tokens:

    decoder-only (GPT):        "self"                                   causal
    encoder-only (BERT):       "self"
    encoder-decoder:           "encoder", "decoder" (causal), "cross"   source and target tokens

``weights`` is ``(layers, heads, queries, keys)``; every row sums to 1 (0 for a masked-out query).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from glassformer import runtime
from glassformer.files import read_json
from glassformer.tokenizer import Tokenizer

MAX_TOKENS = 512  # per sequence: beyond this the page (and a heat map) is no longer readable; refused clearly
WHITESPACE = {" ": "·", "\n": "↵", "\t": "→", "\r": "␍"}


@dataclasses.dataclass
class AttentionView:
    """One kind of attention of one text: ``weights[layer, head, i, j]`` = how much query token i attends to key
    token j."""

    name: str
    query_tokens: list[str]
    key_tokens: list[str]
    weights: torch.Tensor  # (layers, heads, queries, keys), float32
    special_queries: list[bool] = dataclasses.field(default_factory=list)
    special_keys: list[bool] = dataclasses.field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(self.weights.shape)


def readable_tokens(tokenizer: Tokenizer, ids: list[int]) -> tuple[list[str], list[bool]]:
    """Each token as the text it stands for, whitespace made visible (``·`` space, ``↵`` newline), sub-word
    continuations as the tokenizer marks them (``##ing`` for WordPiece), special tokens by name; and which are
    special. A byte-level piece that is only part of a character shows its vocabulary entry instead."""
    specials = {token.content for token in tokenizer.backend.get_added_tokens_decoder().values() if token.special}
    texts, special = [], []
    for i in ids:
        piece = tokenizer.backend.id_to_token(i) or f"<{i}>"
        if piece in specials:
            texts.append(piece)
            special.append(True)
            continue
        decoded = tokenizer.decode([i])
        # part of a multi-byte character, or a WordPiece continuation ("##ing"): the vocabulary entry reads best
        text = piece if "\ufffd" in decoded or not decoded or piece.startswith("##") else decoded
        texts.append("".join(WHITESPACE.get(c, c) for c in text))
        special.append(False)
    return texts, special


def _check_length(ids: list[int], what: str) -> None:
    if not ids:
        raise ValueError(f"the {what} is empty after tokenization; give some text")
    if len(ids) > MAX_TOKENS:
        raise ValueError(
            f"the {what} has {len(ids)} tokens; attention views are limited to {MAX_TOKENS} tokens per sequence "
            "(a page of more is unreadable): shorten the text"
        )


def _stack(per_layer: list[torch.Tensor]) -> torch.Tensor:
    """Per-layer ``(1, heads, q, k)`` -> ``(layers, heads, q, k)`` in float32."""
    return torch.cat([w.float().cpu() for w in per_layer]).detach()


def model_kind(path: str | Path) -> str:
    """ "translation", "bert" or "decoder" for a model path (a run directory, a checkpoint, a shortcut)."""
    from glassformer.checkpoints.gguf import find_gguf
    from glassformer.pipelines.resolve import resolve_model

    location = resolve_model(path)
    if find_gguf(location) is not None:
        return "decoder"
    config = read_json(location / "config.json", "model config")
    kind = config.get("model_type")
    if kind == "transformer":
        return "translation"
    if kind in ("bert", "distilbert"):
        return "bert"
    return "decoder"


def attention_views(
    model_path: str | Path,
    text: str,
    target: str | None = None,
    device: str | None = None,
    precision: str | None = None,
) -> list[AttentionView]:
    """Run the model at ``model_path`` on ``text`` and return its attention views.

    For a translation run ``text`` is the source sentence and ``target`` its translation; without one the model
    translates first (greedy) and the views show the attention while it wrote its own translation. ``device`` and
    ``precision`` say where the model runs (``glassformer.runtime.place_model``; default the CPU in float32)."""
    if not text or not text.strip():
        raise ValueError("the text is empty; give a sentence to look at")
    kind = model_kind(model_path)
    if kind == "translation":
        return _translation_views(model_path, text, target, device, precision)
    if target is not None:
        raise ValueError("--target is only for translation models (encoder-decoder)")
    if kind == "bert":
        from glassformer.pipelines.text_classifier import TextClassifier

        # a classifier run or any BERT directory (an encoder gets a head it does not use here)
        classifier = TextClassifier.load(model_path, device, precision)
        bert, tokenizer = classifier.model.bert.eval(), classifier.tokenizer
        ids = tokenizer.encode(text)
        _check_length(ids, "text")
        with torch.no_grad():
            output = bert(torch.tensor([ids], device=runtime.module_device(bert)), output_attentions=True)
        tokens, special = readable_tokens(tokenizer, ids)
        return [AttentionView("self", tokens, tokens, _stack(output.attentions), special, special)]
    from glassformer.pipelines.language_model import load_language_model

    model, tokenizer = load_language_model(model_path, device=device, precision=precision)
    ids = tokenizer.encode(text)
    _check_length(ids, "text")
    if len(ids) > model.config.max_seq_length:
        raise ValueError(f"the text has {len(ids)} tokens, more than the model's {model.config.max_seq_length}")
    with torch.no_grad():
        attentions = model(torch.tensor([ids], device=runtime.module_device(model)), output_attentions=True).attentions
    tokens, special = readable_tokens(tokenizer, ids)
    return [AttentionView("self", tokens, tokens, _stack(attentions), special, special)]


def _translation_views(
    model_path: str | Path, text: str, target: str | None, device: str | None, precision: str | None
) -> list[AttentionView]:
    from glassformer.pipelines.translator import Translator

    translator = Translator.load(model_path, device, precision)
    model, config = translator.model, translator.model.config
    source_ids = translator.encode_sources([text])[0]
    _check_length(source_ids, "source text")
    if target is None:
        target = translator.translate([text])[0]
    target_ids = [config.bos_token_id, *translator.target_tokenizer.encode(target)]  # the decoder's input: BOS y_1 ...
    _check_length(target_ids, "target text")
    with torch.no_grad():
        where = runtime.module_device(model)
        src, tgt = torch.tensor([source_ids], device=where), torch.tensor([target_ids], device=where)
        out = model(src, tgt, output_attentions=True)
    src_tokens, src_special = readable_tokens(translator.source_tokenizer, source_ids)
    tgt_tokens, tgt_special = readable_tokens(translator.target_tokenizer, target_ids)
    return [
        AttentionView("encoder", src_tokens, src_tokens, _stack(out.encoder_attentions), src_special, src_special),
        AttentionView("decoder", tgt_tokens, tgt_tokens, _stack(out.decoder_attentions), tgt_special, tgt_special),
        AttentionView("cross", tgt_tokens, src_tokens, _stack(out.cross_attentions), tgt_special, src_special),
    ]
