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

from glassformer.generation.cache import KVCache
from glassformer.generation.search import generate
from glassformer.masks import padding_mask


@dataclasses.dataclass
class _DecoderView:
    """What ``generate`` reads of a model's config."""

    vocab_size: int
    max_seq_length: int


class SourceConditionedDecoder(nn.Module):
    """The decoder of a ``Transformer`` with a batch of encoded sources bound in, as a causal language model:
    ``forward(ids, attention_mask, cache, last_token_only)`` -> next-token logits, ``make_cache``.

    The sources are repeated ``copies`` times (one per beam, ``repeat_interleave`` order, as beam search lays
    out its hypotheses); beams of one source share its cross-attention keys/values.
    """

    def __init__(self, model: nn.Module, src: torch.Tensor, copies: int = 1):
        super().__init__()
        self.model = model
        c = model.config
        self.config = _DecoderView(c.tgt_vocab_size, c.max_seq_length)
        memory_mask = padding_mask(src, c.pad_id)  # (batch, 1, 1, src_len)
        memory = model.encode(src, memory_mask)
        self.cross_kv = [
            (k.repeat_interleave(copies, 0), v.repeat_interleave(copies, 0))
            for k, v in model.cross_attention_kv(memory)
        ]
        self.memory_mask = memory_mask.repeat_interleave(copies, 0)

    def make_cache(self, batch: int, max_length: int) -> KVCache:
        return self.model.make_cache(batch, max_length)

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
        if input_ids.size(0) != memory_mask.size(0):  # a search that reordered rows is never shorter or longer
            raise ValueError(f"{input_ids.size(0)} target rows for {memory_mask.size(0)} sources")
        return self.model.decode(
            input_ids, None, memory_mask, cache=cache, cross_kv=cross_kv, last_token_only=last_token_only
        )


def translate_ids(
    model: nn.Module,
    src: torch.Tensor,
    num_beams: int = 4,
    length_penalty: float = 1.0,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
) -> list[list[int]]:
    """Translate a batch of token-id sources ``(batch, src_len)`` (right-padded with ``pad_id``).

    ``num_beams=1`` is greedy search; otherwise beam search scores finished hypotheses by
    ``sum of log-probabilities / length^length_penalty`` (length counts the generated tokens, EOS included), so
    ``length_penalty > 1`` favours longer translations and ``0`` ranks by total log-probability alone.
    Returns each source's best translation as a list of ids, without BOS and EOS.
    """
    c = model.config
    if c.bos_id is None or c.eos_id is None:
        raise ValueError("the model's config has no bos_id/eos_id; set them to the tokenizer's <s> and </s> ids")
    if src.dim() != 2 or src.size(1) == 0:
        raise ValueError("src must be a non-empty (batch, src_len) tensor of token ids")
    if num_beams < 1:
        raise ValueError(f"num_beams must be at least 1, got {num_beams}")
    src_len = int((src != c.pad_id).sum(1).max())
    max_length = min(c.max_seq_length, 1 + math.ceil(max_len_a * src_len + max_len_b))
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        decoder = SourceConditionedDecoder(model, src, copies=num_beams)
        start = torch.full((src.size(0), 1), c.bos_id, dtype=torch.long, device=src.device)
        out = generate(
            decoder,
            start,
            max_length=max_length,
            num_beams=num_beams,
            length_penalty=length_penalty,
            eos_token_id=c.eos_id,
            pad_token_id=c.pad_id,
            pack_weights=False,
        )
    model.train(was_training)
    results = []
    for row in out[:, 1:].tolist():
        if c.eos_id in row:
            row = row[: row.index(c.eos_id)]
        results.append(row)
    return results
