"""Encoder and decoder layers: each sublayer is wrapped in dropout, a residual connection and a layer norm.

    post-norm (the paper):  x = LayerNorm(x + Dropout(Sublayer(x)))
    pre-norm (GPT-2 style): x = x + Dropout(Sublayer(LayerNorm(x)))

``dropout`` acts on each sublayer's output and ``attention_dropout`` / ``activation_dropout`` on the attention
weights / the feed-forward's hidden activations. The paper uses only the first; ``torch.nn.Transformer`` and the
Annotated Transformer use all three with one rate.

Llama-style variants are keyword options of the same layers: ``norm="rmsnorm"``, ``num_kv_heads`` (grouped-query
attention), ``gated_ffn=True`` with ``activation="silu"`` (SwiGLU), ``attention_bias`` / ``ffn_bias`` (each
defaults to ``bias``); rotary position embeddings come in through ``forward(rotary=...)``.

Encoder layer: self-attention, then feed-forward.
Decoder layer: masked self-attention, cross-attention over the encoder output (skipped when built with
``cross_attention=False``, as in a decoder-only model), then feed-forward.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from glassformer.nn.attention import MultiHeadAttention
from glassformer.nn.dropout import Dropout
from glassformer.nn.feedforward import PositionWiseFeedForward
from glassformer.nn.norm import make_norm

if TYPE_CHECKING:
    from glassformer.generation.cache import LayerCache


class EncoderLayer(nn.Module):
    """``(batch, src_len, d_model)`` -> same shape.

    ``forward`` returns ``(x, self_attention_weights)``; the weights, ``(batch, heads, src_len, src_len)``,
    are None unless ``need_weights``.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        d_ff: int,
        dropout: float = 0.1,
        activation: str = "relu",
        norm_first: bool = False,
        layer_norm_eps: float = 1e-5,
        bias: bool = True,
        attention_dropout: float = 0.0,
        activation_dropout: float = 0.0,
        norm: str = "layernorm",
        num_kv_heads: int | None = None,
        gated_ffn: bool = False,
        attention_bias: bool | None = None,
        ffn_bias: bool | None = None,
    ):
        super().__init__()
        self.norm_first = norm_first
        attention_bias = bias if attention_bias is None else attention_bias
        ffn_bias = bias if ffn_bias is None else ffn_bias
        self.self_attn = MultiHeadAttention(d_model, num_heads, attention_dropout, attention_bias, num_kv_heads)
        self.ffn = PositionWiseFeedForward(d_model, d_ff, activation, activation_dropout, ffn_bias, gated_ffn)
        self.norm1 = make_norm(norm, d_model, layer_norm_eps)
        self.norm2 = make_norm(norm, d_model, layer_norm_eps)
        self.dropout = Dropout(dropout)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``mask``: bool, broadcastable to ``(batch, heads, src_len, src_len)``, True = may attend."""
        if self.norm_first:
            h = self.norm1(x)
            attn, weights = self.self_attn(h, h, h, mask, need_weights)
            x = x + self.dropout(attn)
            x = x + self.dropout(self.ffn(self.norm2(x)))
        else:
            attn, weights = self.self_attn(x, x, x, mask, need_weights)
            x = self.norm1(x + self.dropout(attn))
            x = self.norm2(x + self.dropout(self.ffn(x)))
        return x, weights


class DecoderLayer(nn.Module):
    """``(batch, tgt_len, d_model)`` and encoder output ``(batch, src_len, d_model)`` -> ``(batch, tgt_len, d_model)``.

    ``forward`` returns ``(x, self_weights, cross_weights)``, the weights None unless ``need_weights``.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        d_ff: int,
        dropout: float = 0.1,
        activation: str = "relu",
        norm_first: bool = False,
        layer_norm_eps: float = 1e-5,
        bias: bool = True,
        attention_dropout: float = 0.0,
        activation_dropout: float = 0.0,
        cross_attention: bool = True,
        norm: str = "layernorm",
        num_kv_heads: int | None = None,
        gated_ffn: bool = False,
        attention_bias: bool | None = None,
        ffn_bias: bool | None = None,
    ):
        super().__init__()
        self.norm_first = norm_first
        attention_bias = bias if attention_bias is None else attention_bias
        ffn_bias = bias if ffn_bias is None else ffn_bias
        self.self_attn = MultiHeadAttention(d_model, num_heads, attention_dropout, attention_bias, num_kv_heads)
        self.norm1 = make_norm(norm, d_model, layer_norm_eps)
        self.cross_attn = (
            MultiHeadAttention(d_model, num_heads, attention_dropout, attention_bias, num_kv_heads)
            if cross_attention
            else None
        )
        self.norm2 = make_norm(norm, d_model, layer_norm_eps) if cross_attention else None
        self.ffn = PositionWiseFeedForward(d_model, d_ff, activation, activation_dropout, ffn_bias, gated_ffn)
        self.norm3 = make_norm(norm, d_model, layer_norm_eps)
        self.dropout = Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor | None = None,
        self_mask: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        need_weights: bool = False,
        cache: LayerCache | None = None,
        cross_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """
        Args:
            x: ``(batch, tgt_len, d_model)``.
            memory: encoder output ``(batch, src_len, d_model)``; required when the layer has cross-attention.
            self_mask: bool, broadcastable to ``(batch, heads, tgt_len, tgt_len)``: causal & target padding.
            memory_mask: bool, broadcastable to ``(batch, heads, tgt_len, src_len)``: source padding.
            cache: this layer's key/value cache for the self-attention (decoding one step at a time).
            cross_kv: the cross-attention's keys and values of ``memory``, precomputed once per source with
                ``cross_attn.project_kv(memory)`` (decoding); ``memory`` may then be None.
            rotary: ``(cos, sin)`` of the target positions, for rotary position embeddings in the self-attention.
            is_causal: a causal self-attention without a mask tensor (``MultiHeadAttention``'s ``is_causal``).
        """
        if self.cross_attn is not None and memory is None and cross_kv is None:
            raise ValueError("this decoder layer has cross-attention: pass the encoder output as memory")
        cross_weights = None
        if self.norm_first:
            h = self.norm1(x)
            attn, self_weights = self.self_attn(
                h, h, h, self_mask, need_weights, cache, rotary=rotary, is_causal=is_causal
            )
            x = x + self.dropout(attn)
            if self.cross_attn is not None:
                attn, cross_weights = self.cross_attn(
                    self.norm2(x), memory, memory, memory_mask, need_weights, kv=cross_kv
                )
                x = x + self.dropout(attn)
            x = x + self.dropout(self.ffn(self.norm3(x)))
        else:
            attn, self_weights = self.self_attn(
                x, x, x, self_mask, need_weights, cache, rotary=rotary, is_causal=is_causal
            )
            x = self.norm1(x + self.dropout(attn))
            if self.cross_attn is not None:
                attn, cross_weights = self.cross_attn(x, memory, memory, memory_mask, need_weights, kv=cross_kv)
                x = self.norm2(x + self.dropout(attn))
            x = self.norm3(x + self.dropout(self.ffn(x)))
        return x, self_weights, cross_weights
