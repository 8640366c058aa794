"""Encoder and decoder layers: each sublayer is wrapped in dropout, a residual connection and a norm.

    post-norm (the paper):        x = Norm(x + Dropout(Sublayer(x)))
    pre-norm (GPT-2, Llama, T5):  x = x + Dropout(Sublayer(Norm(x)))

``residual`` writes this once; every layer takes one ``BlockConfig`` (``glassformer.nn.config``), which names the
norm and its placement, the attention and the feed-forward. Positions that are not added to the embeddings come in
through ``forward``: ``rotary=(cos, sin)`` (RoPE) or ``position_bias`` (T5's relative bias), both for the
self-attention only.

Encoder layer: self-attention, then feed-forward.
Decoder layer: masked self-attention, cross-attention over the encoder output (skipped when built with
``cross_attention=False``, as in a decoder-only model), then feed-forward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from glassformer.nn.attention import MultiHeadAttention
from glassformer.nn.cache import LayerCache
from glassformer.nn.config import BlockConfig
from glassformer.nn.dropout import Dropout
from glassformer.nn.feedforward import PositionWiseFeedForward
from glassformer.nn.norm import make_norm

Weights = torch.Tensor | None


def residual(
    x: torch.Tensor,
    sublayer: Callable[[torch.Tensor], tuple[torch.Tensor, Weights]],
    norm: nn.Module,
    dropout: nn.Module,
    norm_first: bool,
) -> tuple[torch.Tensor, Weights]:
    """One sublayer with its residual connection and norm: ``(new x, the sublayer's attention weights)``."""
    if norm_first:
        out, weights = sublayer(norm(x))
        return x + dropout(out), weights  # x + Dropout(Sublayer(Norm(x)))
    out, weights = sublayer(x)
    return norm(x + dropout(out)), weights  # Norm(x + Dropout(Sublayer(x)))


def zero_init_projections(layers: nn.ModuleList) -> None:
    """Zero W_O (and its bias) of every attention and W_2 of every feed-forward of the layers whose block asks for
    it (``BlockConfig.zero_init_projections``): every sublayer then adds 0 to the residual stream at the start,
    and the first updates decide what each one writes. Called last by the models' ``reset_parameters``."""
    for layer in layers:
        if not layer.config.zero_init_projections:
            continue
        attentions = (layer.self_attn, getattr(layer, "cross_attn", None))
        for linear in [a.out_proj for a in attentions if a is not None] + [layer.ffn.fc2]:
            nn.init.zeros_(linear.weight)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)


def _norm(config: BlockConfig) -> nn.Module:
    return make_norm(config.norm, config.d_model, config.layer_norm_eps)


class EncoderLayer(nn.Module):
    """``(batch, src_len, d_model)`` -> same shape.

    ``forward`` returns ``(x, self_attention_weights)``; the weights, ``(batch, heads, src_len, src_len)``,
    are None unless ``need_weights``. ``EncoderLayer(d_model, num_heads, d_ff, **fields)`` is short for the
    ``BlockConfig`` with those fields.
    """

    def __init__(self, config: BlockConfig | int, num_heads: int | None = None, d_ff: int | None = None, **fields):
        super().__init__()
        config = BlockConfig.of(config, num_heads, d_ff, **fields)
        self.config = config
        self.norm_first = config.norm_first
        self.self_attn = MultiHeadAttention(config)
        self.ffn = PositionWiseFeedForward(config)
        self.norm1 = _norm(config)
        self.norm2 = _norm(config)
        self.dropout = Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        need_weights: bool = False,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        position_bias: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Weights]:
        """``mask``: bool, broadcastable to ``(batch, heads, src_len, src_len)``, True = may attend."""

        def attend(h: torch.Tensor) -> tuple[torch.Tensor, Weights]:
            return self.self_attn(h, h, h, mask, need_weights, rotary=rotary, position_bias=position_bias)

        x, weights = residual(x, attend, self.norm1, self.dropout, self.norm_first)
        x, _ = residual(x, lambda h: (self.ffn(h), None), self.norm2, self.dropout, self.norm_first)
        return x, weights


class DecoderLayer(nn.Module):
    """``(batch, tgt_len, d_model)`` and encoder output ``(batch, src_len, d_model)`` -> ``(batch, tgt_len, d_model)``.

    ``forward`` returns ``(x, self_weights, cross_weights)``, the weights None unless ``need_weights``.
    ``DecoderLayer(d_model, num_heads, d_ff, cross_attention=True, **fields)`` is short for the ``BlockConfig``
    with those fields.
    """

    def __init__(
        self,
        config: BlockConfig | int,
        num_heads: int | None = None,
        d_ff: int | None = None,
        cross_attention: bool = True,
        **fields,
    ):
        super().__init__()
        config = BlockConfig.of(config, num_heads, d_ff, **fields)
        self.config = config
        self.norm_first = config.norm_first
        self.self_attn = MultiHeadAttention(config)
        self.norm1 = _norm(config)
        self.cross_attn = MultiHeadAttention(config) if cross_attention else None
        self.norm2 = _norm(config) if cross_attention else None
        self.ffn = PositionWiseFeedForward(config)
        self.norm3 = _norm(config)
        self.dropout = Dropout(config.dropout)

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
        position_bias: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Weights, Weights]:
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
            position_bias: added to the self-attention's logits (T5's relative bias).
        """
        if self.cross_attn is not None and memory is None and cross_kv is None:
            raise ValueError("this decoder layer has cross-attention: pass the encoder output as memory")

        def attend(h: torch.Tensor) -> tuple[torch.Tensor, Weights]:
            return self.self_attn(
                h, h, h, self_mask, need_weights, cache, rotary=rotary, is_causal=is_causal,
                position_bias=position_bias,
            )  # fmt: skip

        x, self_weights = residual(x, attend, self.norm1, self.dropout, self.norm_first)
        cross_weights = None
        if self.cross_attn is not None:

            def attend_memory(h: torch.Tensor) -> tuple[torch.Tensor, Weights]:
                return self.cross_attn(h, memory, memory, memory_mask, need_weights, kv=cross_kv)

            x, cross_weights = residual(x, attend_memory, self.norm2, self.dropout, self.norm_first)
        x, _ = residual(x, lambda h: (self.ffn(h), None), self.norm3, self.dropout, self.norm_first)
        return x, self_weights, cross_weights
