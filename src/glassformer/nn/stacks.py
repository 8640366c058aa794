"""The encoder and decoder stacks: embedding, positions, dropout, N layers (and a final norm for pre-norm).

    Encoder(src)         = Layer_N(... Layer_1(Dropout(PE(E_src[src] · sqrt(d_model)))))
    Decoder(tgt, memory) = Layer_N(... Layer_1(Dropout(PE(E_tgt[tgt] · sqrt(d_model))), memory))

A pre-norm stack ends with a final LayerNorm (its layers leave the residual stream un-normalized);
``final_norm`` can also be set explicitly, e.g. to match ``torch.nn.Transformer``, which always has one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from glassformer.nn.dropout import Dropout
from glassformer.nn.embedding import TokenEmbedding, positional_embedding
from glassformer.nn.layers import DecoderLayer, EncoderLayer
from glassformer.nn.norm import LayerNorm
from glassformer.nn.validation import check_token_ids

if TYPE_CHECKING:
    from glassformer.generation.cache import KVCache


class _Stack(nn.Module):
    """What the encoder and decoder share: token embedding, positions, dropout, the layers and the
    optional final norm. Subclasses name their ``layer_class``."""

    layer_class: type[nn.Module]

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        num_layers: int,
        num_heads: int,
        d_ff: int,
        max_seq_length: int,
        dropout: float = 0.1,
        activation: str = "relu",
        norm_first: bool = False,
        final_norm: bool | None = None,
        positional: str = "sinusoidal",
        pad_id: int | None = None,
        layer_norm_eps: float = 1e-5,
        bias: bool = True,
        attention_dropout: float = 0.0,
        activation_dropout: float = 0.0,
    ):
        super().__init__()
        self.vocab_size = vocab_size
        self.max_seq_length = max_seq_length
        self.embedding = TokenEmbedding(vocab_size, d_model, padding_idx=pad_id)
        self.positions = positional_embedding(positional, d_model, max_seq_length)
        self.dropout = Dropout(dropout)
        self.layers = nn.ModuleList(
            self.layer_class(
                d_model,
                num_heads,
                d_ff,
                dropout,
                activation,
                norm_first,
                layer_norm_eps,
                bias,
                attention_dropout,
                activation_dropout,
            )
            for _ in range(num_layers)
        )
        use_final_norm = norm_first if final_norm is None else final_norm
        self.final_norm = LayerNorm(d_model, layer_norm_eps) if use_final_norm else None

    def embed(self, ids: torch.Tensor, name: str, offset: int = 0) -> torch.Tensor:
        """``(batch, seq)`` ids -> ``Dropout(PE(E[ids] · sqrt(d_model)))``, ``(batch, seq, d_model)``; positions
        start at ``offset`` (the number of cached positions while decoding)."""
        check_token_ids(ids, self.vocab_size, self.max_seq_length, name)
        return self.dropout(self.positions(self.embedding(ids), offset=offset))


class Encoder(_Stack):
    """``forward(src, mask)``: ``(batch, src_len)`` token ids -> ``(batch, src_len, d_model)``.

    ``mask`` is bool, broadcastable to ``(batch, heads, src_len, src_len)``, True = may attend: usually
    ``glassformer.masks.padding_mask(src, pad_id)``. With ``return_attentions=True`` it returns
    ``(x, [weights of each layer, (batch, heads, src_len, src_len)])``.
    """

    layer_class = EncoderLayer

    def forward(
        self, src: torch.Tensor, mask: torch.Tensor | None = None, return_attentions: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.embed(src, "src")
        attentions = []
        for layer in self.layers:
            x, weights = layer(x, mask, need_weights=return_attentions)
            attentions.append(weights)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return (x, attentions) if return_attentions else x


class Decoder(_Stack):
    """``forward(tgt, memory, self_mask, memory_mask)``: ``(batch, tgt_len)`` token ids and encoder output
    ``(batch, src_len, d_model)`` -> ``(batch, tgt_len, d_model)``.

    ``self_mask``: bool, broadcastable to ``(batch, heads, tgt_len, tgt_len)`` (causal & target padding);
    ``memory_mask``: bool, broadcastable to ``(batch, heads, tgt_len, src_len)`` (source padding).
    With ``return_attentions=True`` it returns ``(x, [self weights per layer], [cross weights per layer])``.

    Decoding step by step: ``cache`` (a ``KVCache``) keeps the self-attention keys/values of earlier positions and
    ``cross_kv`` holds each layer's cross-attention keys/values of the memory, computed once with
    ``cross_attention_kv(memory)``.
    """

    layer_class = DecoderLayer

    def cross_attention_kv(self, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, the keys and values of ``memory`` ``(batch, src_len, d_model)`` for the cross-attention,
        each ``(batch, heads, src_len, d_k)``."""
        return [layer.cross_attn.project_kv(memory) for layer in self.layers]

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor | None,
        self_mask: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        return_attentions: bool = False,
        cache: KVCache | None = None,
        cross_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        x = self.embed(tgt, "tgt", offset=cache.length if cache is not None else 0)
        self_attentions, cross_attentions = [], []
        for i, layer in enumerate(self.layers):
            x, self_weights, cross_weights = layer(
                x,
                memory,
                self_mask,
                memory_mask,
                need_weights=return_attentions,
                cache=cache.layer(i) if cache is not None else None,
                cross_kv=cross_kv[i] if cross_kv is not None else None,
            )
            self_attentions.append(self_weights)
            cross_attentions.append(cross_weights)
        if cache is not None:
            cache.advance(tgt.size(1))
        if self.final_norm is not None:
            x = self.final_norm(x)
        return (x, self_attentions, cross_attentions) if return_attentions else x
