"""Decoding for the encoder-decoder ``Transformer``: greedy search and beam search, batched.

The encoder runs once per batch of sources and each decoder layer's cross-attention keys/values of its output
are computed once (``Transformer.cross_attention_kv``). Decoding then reuses the decoder-only search of
``glassformer.generation.search``: ``SourceConditionedDecoder`` presents the model through the same small
interface as a GPT (next-token logits given a key/value cache), with the memory bound in.

    src (batch, src_len) ──encoder──> memory ──W_K, W_V──> cross keys/values   (once)
    [BOS] ──decoder step──> next token ──decoder step──> ... until EOS or the length limit

The length limit is relative to the source: ``max_len_a · src_len + max_len_b`` target tokens (the longest source
of the batch), capped by the model's ``max_seq_length``.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from glassformer.generation.config import GenerationConfig
from glassformer.generation.search import generate
from glassformer.nn.cache import KVCache


@dataclasses.dataclass
class _DecoderView:
    """What ``generate`` reads of a model's config."""

    vocab_size: int
    max_seq_length: int


class SourceConditionedDecoder(nn.Module):
    """The decoder of a ``Transformer`` with a batch of encoded sources bound in, as a causal language model:
    ``forward(ids, attention_mask, cache, last_token_only)`` -> next-token logits, ``make_cache``.

    Each source serves ``copies`` consecutive rows (one per beam, ``repeat_interleave`` order, as beam search lays
    out its hypotheses): the beams of one source share its cross-attention keys/values, stored and read once for
    all of them. ``attention_mask`` ``(batch, src_len)`` marks the real source tokens (default: those that are not
    ``pad_token_id``).
    """

    def __init__(
        self, model: nn.Module, src: torch.Tensor, copies: int = 1, attention_mask: torch.Tensor | None = None
    ):
        super().__init__()
        self.model = model
        c = model.config
        self.config = _DecoderView(c.tgt_vocab_size, c.max_seq_length)
        if attention_mask is not None:
            attention_mask = attention_mask.to(src.device)
        memory_mask = model.source_mask(src, attention_mask)  # (batch, 1, 1, src_len)
        memory = model.encode(src, memory_mask)
        self.cross_kv = model.cross_attention_kv(memory)  # per layer, (batch, kv_heads, src_len, d_k) each
        self.memory_mask, self.copies = memory_mask, copies

    def make_cache(self, batch: int, max_length: int) -> KVCache:
        return self.model.make_cache(batch, max_length)

    @property
    def decoder_stack(self) -> nn.Module:
        """The model's decoder: the layers a fused decoding step runs (``glassformer.generation.fused_step``), with
        this object's ``cross_kv``, ``memory_mask`` and ``copies`` as their memory."""
        return self.model.decoder

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of the decoder's final hidden states (``Transformer.project``)."""
        return self.model.project(hidden)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        last_token_only: bool = False,
    ) -> torch.Tensor:
        if attention_mask is not None:
            raise ValueError("target prefixes are not padded; decode without an attention mask")
        cross_kv, memory_mask = self.cross_kv, self.memory_mask
        if input_ids.size(0) != memory_mask.size(0) * self.copies:  # a search never has more or fewer rows
            raise ValueError(f"{input_ids.size(0)} target rows for {memory_mask.size(0)} sources × {self.copies}")
        return self.model.decode(
            input_ids, None, memory_mask, cache=cache, cross_kv=cross_kv, last_token_only=last_token_only
        )


def generate_seq2seq(
    model: nn.Module,
    input_ids: torch.Tensor,
    generation_config: GenerationConfig | None = None,
    *,
    attention_mask: torch.Tensor | None = None,
    decoder_start_token_id: int | None = None,
    **options,
) -> torch.Tensor:
    """``Transformer.generate``: encode ``input_ids`` ``(batch, src_len)`` once, then decode from the start token
    with the shared search. Returns the decoder's tokens ``(batch, 1 + new)``, beginning with the start token
    (``decoder_start_token_id``, default the config's ``bos_token_id``), as ``transformers`` does for T5; finished rows
    are padded with ``pad_token_id``."""
    c = model.config
    start_id = c.bos_token_id if decoder_start_token_id is None else decoder_start_token_id
    if start_id is None:
        raise ValueError("the model's config has no bos_token_id to start decoding from; pass decoder_start_token_id")
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.size(1) == 0:
        raise ValueError("input_ids must be a non-empty (batch, src_len) tensor of token ids")
    config = (generation_config or GenerationConfig()).updated(**options)
    if config.eos_token_id is None and "eos_token_id" not in options:
        config.eos_token_id = c.eos_token_id
    if config.pad_token_id is None and "pad_token_id" not in options:
        config.pad_token_id = c.pad_token_id
    config.validate(c.tgt_vocab_size)  # before the encoder runs
    config.total_length(1, c.max_seq_length)
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            decoder = SourceConditionedDecoder(model, input_ids, config.num_beams, attention_mask)
            start = torch.full((input_ids.size(0), 1), start_id, dtype=torch.long, device=device)
            return generate(decoder, start, config)
    finally:
        model.train(was_training)


def target_length(model: nn.Module, src: torch.Tensor, max_len_a: float = 1.5, max_len_b: int = 10) -> int:
    """The decoder's length limit for a batch of sources ``(batch, src_len)``, start token included:
    ``1 + ceil(max_len_a · src_len + max_len_b)`` for the longest real source, capped by the model's context."""
    c = model.config
    src_len = int((src != c.pad_token_id).sum(1).max())
    return min(c.max_seq_length, 1 + math.ceil(max_len_a * src_len + max_len_b))


def translate_ids(
    model: nn.Module,
    src: torch.Tensor,
    num_beams: int = 4,
    length_penalty: float = 1.0,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
) -> list[list[int]]:
    """Translate a batch of token-id sources ``(batch, src_len)`` (right-padded with ``pad_token_id``).

    ``num_beams=1`` is greedy search; otherwise beam search scores finished hypotheses by
    ``sum of log-probabilities / length^length_penalty`` (length counts the generated tokens, EOS included), so
    ``length_penalty > 1`` favours longer translations and ``0`` ranks by total log-probability alone.
    Returns each source's best translation as a list of ids, without BOS and EOS.
    """
    c = model.config
    if c.bos_token_id is None or c.eos_token_id is None:
        raise ValueError(
            "the model's config has no bos_token_id/eos_token_id; set them to the tokenizer's <s> and </s> ids"
        )
    if src.dim() != 2 or src.size(1) == 0:
        raise ValueError("src must be a non-empty (batch, src_len) tensor of token ids")
    max_length = target_length(model, src, max_len_a, max_len_b)
    out = generate_seq2seq(model, src, max_length=max_length, num_beams=num_beams, length_penalty=length_penalty)
    results = []
    for row in out[:, 1:].tolist():
        if c.eos_token_id in row:
            row = row[: row.index(c.eos_token_id)]
        results.append(row)
    return results
