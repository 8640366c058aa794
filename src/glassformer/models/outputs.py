"""What a model returns when more than its logits or hidden states is asked for (``output_attentions=True``, ...).

One shape per model family, with the field names ``transformers`` uses:

    CausalLMOutput    GPT (GPT-2, Llama)       logits, attentions: a list over layers of (batch, heads, q, k)
    Seq2SeqLMOutput   Transformer (paper, T5)  logits, encoder_attentions, decoder_attentions, cross_attentions
    BertOutput        Bert                     last_hidden_state, pooled_output, hidden_states, attentions
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class CausalLMOutput:
    """logits ``(batch, seq, vocab)``; attentions: per layer ``(batch, heads, seq, past + seq)``."""

    logits: torch.Tensor
    attentions: list[torch.Tensor] | None = None


@dataclasses.dataclass
class Seq2SeqLMOutput:
    """logits ``(batch, tgt_len, vocab)``; per layer: encoder ``(batch, heads, src_len, src_len)``, decoder
    ``(batch, heads, tgt_len, tgt_len)``, cross ``(batch, heads, tgt_len, src_len)``."""

    logits: torch.Tensor
    encoder_attentions: list[torch.Tensor] | None = None
    decoder_attentions: list[torch.Tensor] | None = None
    cross_attentions: list[torch.Tensor] | None = None
    encoder_last_hidden_state: torch.Tensor | None = None


@dataclasses.dataclass
class BertOutput:
    """last_hidden_state: ``(batch, seq, d_model)``; pooled_output: ``(batch, d_model)`` or None; hidden_states: the
    embeddings' output and every layer's, ``num_layers + 1`` tensors ``(batch, seq, d_model)``; attentions: every
    layer's weights ``(batch, heads, seq, seq)``."""

    last_hidden_state: torch.Tensor
    pooled_output: torch.Tensor | None = None
    hidden_states: list[torch.Tensor] | None = None
    attentions: list[torch.Tensor] | None = None
