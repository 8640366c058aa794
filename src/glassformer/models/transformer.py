"""The encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al., 2017).

    memory = Encoder(src)                              (batch, src_len, d_model)
    hidden = Decoder(tgt, memory)                      (batch, tgt_len, d_model)
    logits = hidden W_out + b_out                      (batch, tgt_len, tgt_vocab_size)

Masks are built from ``pad_id`` unless given (bool, True = may attend):
    encoder self-attention   padding_mask(src)              (batch, 1, 1, src_len)
    decoder self-attention   causal & padding_mask(tgt)     (batch, 1, tgt_len, tgt_len)
    decoder cross-attention  padding_mask(src)              (batch, 1, 1, src_len)
The cross-attention mask hides source padding from the decoder (the guide passed None there).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from glassformer.generation.cache import KVCache
from glassformer.masks import decoder_self_attention_mask, padding_mask
from glassformer.models.config import ModelConfig
from glassformer.models.pretrained import PretrainedMixin
from glassformer.nn.embedding import POSITIONAL_KINDS, LearnedPositionalEmbedding
from glassformer.nn.feedforward import check_activation
from glassformer.nn.linear import Linear
from glassformer.nn.stacks import Decoder, Encoder
from glassformer.nn.validation import check_mask


@dataclasses.dataclass
class TransformerConfig(ModelConfig):
    """Configuration of the seq2seq ``Transformer``. Field names follow the guide; defaults are the paper's
    base model. ``num_layers`` is the depth of the encoder and of the decoder each.

    Dropout: ``dropout`` on every sublayer output and on embeddings + positions (the paper's placement);
    ``attention_dropout`` on the attention weights and ``activation_dropout`` inside the feed-forward are extra
    (``torch.nn.Transformer`` sets both to ``dropout``).

    Variant options:
        norm_first: False = post-norm (the paper), True = pre-norm.
        activation: "relu" (the paper), "gelu" or "gelu_tanh" in the feed-forward network.
        positional: "sinusoidal" (the paper) or "learned" positions.
        final_norm: a LayerNorm after each stack; None = only for pre-norm (``torch.nn.Transformer`` always has one).
        share_embeddings: one embedding table for source and target (needs equal vocabularies).
        tie_output: the output projection reuses the target embedding matrix.
        bias: biases in the attention, feed-forward and output projections.
    """

    model_type = "transformer"

    src_vocab_size: int = 10000
    tgt_vocab_size: int = 10000
    d_model: int = 512
    num_layers: int = 6
    num_heads: int = 8
    d_ff: int = 2048
    max_seq_length: int = 512
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    pad_id: int = 0
    norm_first: bool = False
    activation: str = "relu"
    positional: str = "sinusoidal"
    final_norm: bool | None = None
    share_embeddings: bool = False
    tie_output: bool = False
    layer_norm_eps: float = 1e-5
    bias: bool = True
    bos_id: int | None = None  # the decoder's first input when translating
    eos_id: int | None = None  # ends a translation
    unk_id: int | None = None

    def __post_init__(self) -> None:
        self.check_positive(
            "src_vocab_size", "tgt_vocab_size", "d_model", "num_layers", "num_heads", "d_ff", "max_seq_length"
        )
        self.check_heads(self.d_model, self.num_heads)
        self.check_probabilities("dropout", "attention_dropout", "activation_dropout")
        if not 0 <= self.pad_id < min(self.src_vocab_size, self.tgt_vocab_size):
            raise ValueError(f"pad_id={self.pad_id} is outside the vocabularies; it must be a valid token id")
        for name in ("bos_id", "eos_id", "unk_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.tgt_vocab_size:
                raise ValueError(f"{name}={value} is outside the target vocabulary of {self.tgt_vocab_size} tokens")
        check_activation(self.activation)
        if self.positional not in POSITIONAL_KINDS:
            raise ValueError(f"unknown positional encoding {self.positional!r}; choose one of {POSITIONAL_KINDS}")
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ValueError(
                f"share_embeddings needs src_vocab_size == tgt_vocab_size, got {self.src_vocab_size} and "
                f"{self.tgt_vocab_size}; use a joint vocabulary or turn share_embeddings off"
            )


class Transformer(PretrainedMixin, nn.Module):
    """The encoder-decoder model. ``model(src, tgt)`` -> logits ``(batch, tgt_len, tgt_vocab_size)``.

    For teacher-forced training feed ``tgt[:, :-1]`` and compare the logits with ``tgt[:, 1:]``.
    """

    config_class = TransformerConfig

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        stack = dict(
            d_model=config.d_model,
            num_layers=config.num_layers,
            num_heads=config.num_heads,
            d_ff=config.d_ff,
            max_seq_length=config.max_seq_length,
            dropout=config.dropout,
            attention_dropout=config.attention_dropout,
            activation_dropout=config.activation_dropout,
            activation=config.activation,
            norm_first=config.norm_first,
            final_norm=config.final_norm,
            positional=config.positional,
            pad_id=config.pad_id,
            layer_norm_eps=config.layer_norm_eps,
            bias=config.bias,
        )
        self.encoder = Encoder(config.src_vocab_size, **stack)
        self.decoder = Decoder(config.tgt_vocab_size, **stack)
        self.output_projection = Linear(config.d_model, config.tgt_vocab_size, bias=config.bias)
        self.reset_parameters()
        if config.share_embeddings:
            self.decoder.embedding.embedding.weight = self.encoder.embedding.embedding.weight
        if config.tie_output:
            self.output_projection.weight = self.decoder.embedding.embedding.weight

    def reset_parameters(self) -> None:
        """Xavier-uniform matrices and zero biases (as ``torch.nn.Transformer``); token embeddings
        N(0, 1/d_model), so that after the sqrt(d_model) scale they have unit variance; padding row zero."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for stack in (self.encoder, self.decoder):
            nn.init.normal_(stack.embedding.weight, std=1 / math.sqrt(self.config.d_model))
            with torch.no_grad():
                stack.embedding.weight[self.config.pad_id].zero_()
            if isinstance(stack.positions, LearnedPositionalEmbedding):
                nn.init.normal_(stack.positions.weight, std=0.02)

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(batch, src_len)`` ids -> memory ``(batch, src_len, d_model)``; mask defaults to source padding."""
        if src_mask is None:
            src_mask = padding_mask(src, self.config.pad_id)
        return self.encoder(src, src_mask)

    def make_cache(self, batch: int, max_length: int) -> KVCache:
        """An empty key/value cache of the decoder's self-attention for ``batch`` translations of up to
        ``max_length`` target positions."""
        c, weight = self.config, self.output_projection.weight
        return KVCache(
            c.num_layers, batch, c.num_heads, max_length, c.d_model // c.num_heads, weight.dtype, weight.device
        )

    def cross_attention_kv(self, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each decoder layer's cross-attention keys and values of ``memory``, computed once per source."""
        return self.decoder.cross_attention_kv(memory)

    def decode(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor | None,
        memory_mask: torch.Tensor | None,
        tgt_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        cross_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        last_token_only: bool = False,
    ) -> torch.Tensor:
        """``(batch, tgt_len)`` ids and memory -> logits ``(batch, tgt_len, tgt_vocab_size)``.

        ``memory_mask`` is the source padding mask, ``padding_mask(src, pad_id)``; it is required so that a
        caller cannot forget it (pass None explicitly only when the source has no padding).

        Decoding one token at a time: pass ``cache`` (from ``make_cache``; ``tgt`` then holds only the new
        tokens, which must not be padding) and ``cross_kv`` (from ``cross_attention_kv(memory)``; ``memory`` may
        then be None); ``last_token_only`` computes logits for the last position only, ``(batch, 1, vocab)``.
        """
        batch = cross_kv[0][0].size(0) if memory is None and cross_kv else memory.size(0)
        if batch != tgt.size(0):
            raise ValueError(f"tgt has batch size {tgt.size(0)} but memory has {batch}; they must match")
        if tgt_mask is None:
            if cache is None:
                tgt_mask = decoder_self_attention_mask(tgt, self.config.pad_id)
            elif tgt.size(1) > 1:  # several new tokens after the cached ones: causal over past + new
                past, seq = cache.length, tgt.size(1)
                tgt_mask = torch.ones(seq, past + seq, dtype=torch.bool, device=tgt.device).tril(past)
        hidden = self.decoder(tgt, memory, tgt_mask, memory_mask, cache=cache, cross_kv=cross_kv)
        if last_token_only:
            hidden = hidden[:, -1:]
        return self.output_projection(hidden)

    def forward(
        self,
        src: torch.Tensor,
        tgt: torch.Tensor,
        src_mask: torch.Tensor | None = None,
        tgt_mask: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        return_attentions: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        """
        Args:
            src: ``(batch, src_len)`` source ids.
            tgt: ``(batch, tgt_len)`` target ids (the decoder's input, e.g. ``[BOS] y_1 .. y_{n-1}``).
            src_mask: encoder self-attention mask, default ``padding_mask(src, pad_id)``.
            tgt_mask: decoder self-attention mask, default ``causal & padding_mask(tgt, pad_id)``.
            memory_mask: cross-attention mask, default ``padding_mask(src, pad_id)``.
            return_attentions: also return the attention weights of every layer (the reference path), as
                ``{"encoder": [(batch, heads, src_len, src_len)], "decoder": [(batch, heads, tgt_len, tgt_len)],
                "cross": [(batch, heads, tgt_len, src_len)]}``, one tensor per layer.

        Returns:
            logits ``(batch, tgt_len, tgt_vocab_size)``, with the attentions when asked.
        """
        if src.dim() == 2 and tgt.dim() == 2:  # shapes checked up front, before the encoder runs
            if src.size(0) != tgt.size(0):
                raise ValueError(f"src has batch size {src.size(0)} but tgt has {tgt.size(0)}; they must match")
            (batch, s), t, h = src.shape, tgt.size(1), self.config.num_heads
            for mask, shape, name in (
                (src_mask, (batch, h, s, s), "src_mask"),
                (tgt_mask, (batch, h, t, t), "tgt_mask"),
                (memory_mask, (batch, h, t, s), "memory_mask"),
            ):
                if mask is not None:
                    check_mask(mask, shape, name)
        src_padding = padding_mask(src, self.config.pad_id)
        memory_mask = src_padding if memory_mask is None else memory_mask
        if not return_attentions:
            memory = self.encoder(src, src_padding if src_mask is None else src_mask)
            return self.decode(tgt, memory, memory_mask, tgt_mask)
        memory, encoder = self.encoder(src, src_padding if src_mask is None else src_mask, return_attentions=True)
        if tgt_mask is None:
            tgt_mask = decoder_self_attention_mask(tgt, self.config.pad_id)
        hidden, decoder, cross = self.decoder(tgt, memory, tgt_mask, memory_mask, return_attentions=True)
        return self.output_projection(hidden), {"encoder": encoder, "decoder": decoder, "cross": cross}
