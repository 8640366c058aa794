"""The stack every model is built of: embedding, positions, dropout, N layers (and a final norm for pre-norm).

    Encoder(src)         = Layer_N(... Layer_1(Dropout(PE(E_src[src] · sqrt(d_model)))))
    Decoder(tgt, memory) = Layer_N(... Layer_1(Dropout(PE(E_tgt[tgt] · sqrt(d_model))), memory))
    GPT                  = a ``Stack`` of decoder layers without cross-attention, and its LM head
    BERT                 = a ``Stack`` of encoder layers whose embeddings add segments and are normalized:
                           x_0 = Dropout(LayerNorm(E[ids] + P[positions] + S[segments]))

``Stack`` holds the parts (their attribute names are the checkpoints' weight names: ``embedding``, ``positions``,
``segments``, ``embedding_norm``, ``layers``, ``final_norm``) and computes ``embed`` and ``position_inputs``; its
``kind`` — ``encoder``, ``decoder`` (with cross-attention) or ``decoder_only`` — picks the layer. Each stack takes
one ``StackConfig`` (``glassformer.nn.config``). Positions enter in one of three ways, set by its
``BlockConfig.position``: added to the embeddings (sinusoidal or learned, the paper), rotated into queries and keys
(rotary: the angles computed once per forward and shared by the layers), or added to the self-attention logits
(relative: T5's bias, computed once per stack — bidirectional in the encoder, causal buckets in the decoder — and
shared by its layers). A pre-norm stack ends with a final norm (its layers leave the residual stream
un-normalized); ``final_norm`` can also be set explicitly, e.g. to match ``torch.nn.Transformer``, which always
has one.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from glassformer.nn.cache import KVCache
from glassformer.nn.config import BlockConfig, StackConfig
from glassformer.nn.dropout import Dropout
from glassformer.nn.embedding import TokenEmbedding, positional_embedding
from glassformer.nn.layers import DecoderLayer, EncoderLayer
from glassformer.nn.norm import make_norm
from glassformer.nn.relative_position import RelativePositionBias
from glassformer.nn.rotary import RotaryEmbedding
from glassformer.nn.validation import check_token_ids

_STACK_FIELDS = {f.name for f in dataclasses.fields(StackConfig)} - {"block", "vocab_size"}


def stack_config(config: StackConfig | int, **fields) -> StackConfig:
    """``config`` itself, or the stack of ``vocab_size=config`` with the given stack and block fields (the short
    form of ``Encoder(vocab_size, d_model=..., num_layers=..., ...)``)."""
    if isinstance(config, StackConfig):
        if fields:
            raise ValueError("pass either a StackConfig or vocab_size with options, not both")
        return config
    stack = {k: v for k, v in fields.items() if k in _STACK_FIELDS}
    block = {k: v for k, v in fields.items() if k not in _STACK_FIELDS}
    d_model = block.pop("d_model")
    return StackConfig(block=BlockConfig.of(d_model, **block), vocab_size=config, **stack)


class Stack(nn.Module):
    """Token embedding, positions (added, rotary or relative), segments and a norm of the embeddings where the
    config asks, dropout, the layers of ``kind`` and the optional final norm: the parts of every model."""

    kind = "encoder"  # "encoder": EncoderLayer; "decoder": DecoderLayer; "decoder_only": without cross-attention

    def __init__(self, config: StackConfig | int, **fields):
        super().__init__()
        config = stack_config(config, **fields)
        block = config.block
        self.stack_config = config
        self.vocab_size = config.vocab_size
        self.max_seq_length = config.max_seq_length
        self.embedding = TokenEmbedding(
            config.vocab_size, block.d_model, padding_idx=config.pad_token_id, scale=config.scale_embeddings
        )
        self.positions = (
            positional_embedding(config.positional, block.d_model, config.max_seq_length)
            if config.positional != "none"
            else None
        )
        self.segments = nn.Embedding(config.type_vocab_size, block.d_model) if config.type_vocab_size > 0 else None
        norm = make_norm(block.norm, block.d_model, block.layer_norm_eps) if config.embedding_norm else None
        self.embedding_norm = norm
        self.rotary = RotaryEmbedding(block.dim_per_head, block.rope_theta) if block.position == "rope" else None
        self.relative_bias = (
            RelativePositionBias(
                block.num_heads, block.relative_buckets, block.relative_max_distance, self.kind == "encoder"
            )
            if block.position == "relative"
            else None
        )
        self.dropout = Dropout(block.dropout)
        self.layers = nn.ModuleList(self.make_layer(block) for _ in range(config.num_layers))
        self.final_norm = make_norm(block.norm, block.d_model, block.layer_norm_eps) if config.has_final_norm else None

    def make_layer(self, block: BlockConfig) -> nn.Module:
        if self.kind == "encoder":
            return EncoderLayer(block)
        return DecoderLayer(block, cross_attention=self.kind == "decoder")

    def embed(
        self,
        ids: torch.Tensor,
        name: str = "input_ids",
        offset: int = 0,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(batch, seq)`` ids -> ``Dropout(Norm(PE(E[ids] · sqrt(d_model)) + S[segments]))``, ``(batch, seq,
        d_model)`` (each part where the config has it); positions start at ``offset`` (the number of cached positions
        while decoding), or are ``position_ids`` ``(batch, seq)`` (left-padded rows count from their first token)."""
        check_token_ids(ids, self.vocab_size, self.max_seq_length, name)
        x = self.embedding(ids)
        if self.positions is not None:
            x = self.positions(x, offset=offset, position_ids=position_ids)
        elif offset + ids.size(1) > self.max_seq_length:
            raise ValueError(
                f"positions up to {offset + ids.size(1)} requested but max_seq_length is {self.max_seq_length}; "
                "shorten the input or build the model with a larger max_seq_length"
            )
        if self.segments is not None:
            x = x + self.segment_embeddings(ids, token_type_ids)
        elif token_type_ids is not None and bool(token_type_ids.any()):
            raise ValueError("this model has no segment embeddings (type_vocab_size=0); pass no token_type_ids")
        if self.embedding_norm is not None:
            x = self.embedding_norm(x)
        return self.dropout(x)

    def segment_embeddings(self, ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        """S[segments] ``(batch, seq, d_model)``, or segment 0's vector when no ids are given."""
        if token_type_ids is None:
            return self.segments.weight[0]
        check_token_ids(token_type_ids, self.segments.num_embeddings, None, "token_type_ids")
        if token_type_ids.shape != ids.shape:
            raise ValueError(
                f"token_type_ids has shape {tuple(token_type_ids.shape)} but input_ids has {tuple(ids.shape)}; "
                "give one segment id per token"
            )
        return self.segments(token_type_ids)

    def position_inputs(self, x: torch.Tensor, offset: int = 0, position_ids: torch.Tensor | None = None) -> dict:
        """The rotary angles or the relative bias of positions ``offset .. offset + seq - 1`` (keys from 0), or of
        ``position_ids``, as keyword arguments for every layer; empty for positions added to the embeddings."""
        seq = x.size(1)
        if self.rotary is not None:
            if position_ids is None:
                position_ids = torch.arange(offset, offset + seq, device=x.device)[None]
            return {"rotary": self.rotary(position_ids, x.dtype)}
        if self.relative_bias is not None:
            return {"position_bias": self.relative_bias(seq, offset + seq, offset)}
        return {}


class Encoder(Stack):
    """``forward(src, mask)``: ``(batch, src_len)`` token ids -> ``(batch, src_len, d_model)``.

    ``mask`` is bool, broadcastable to ``(batch, heads, src_len, src_len)``, True = may attend: usually
    ``glassformer.masks.padding_mask(src, pad_token_id)``. With ``output_attentions=True`` it returns
    ``(x, [weights of each layer, (batch, heads, src_len, src_len)])``.
    """

    kind = "encoder"

    def forward(
        self, src: torch.Tensor, mask: torch.Tensor | None = None, output_attentions: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.embed(src, "src")
        positions = self.position_inputs(x)
        attentions = []
        for layer in self.layers:
            x, weights = layer(x, mask, need_weights=output_attentions, **positions)
            attentions.append(weights)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return (x, attentions) if output_attentions else x


class Decoder(Stack):
    """``forward(tgt, memory, self_mask, memory_mask)``: ``(batch, tgt_len)`` token ids and encoder output
    ``(batch, src_len, d_model)`` -> ``(batch, tgt_len, d_model)``.

    ``self_mask``: bool, broadcastable to ``(batch, heads, tgt_len, tgt_len)`` (causal & target padding);
    ``memory_mask``: bool, broadcastable to ``(batch, heads, tgt_len, src_len)`` (source padding).
    With ``output_attentions=True`` it returns ``(x, [self weights per layer], [cross weights per layer])``.

    Decoding step by step: ``cache`` (a ``KVCache``) keeps the self-attention keys/values of earlier positions and
    ``cross_kv`` holds each layer's cross-attention keys/values of the memory, computed once with
    ``cross_attention_kv(memory)``.
    """

    kind = "decoder"

    def cross_attention_kv(self, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, the keys and values of ``memory`` ``(batch, src_len, d_model)`` for the cross-attention,
        each ``(batch, kv_heads, src_len, d_k)``."""
        return [layer.cross_attn.project_kv(memory) for layer in self.layers]

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor | None,
        self_mask: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        cache: KVCache | None = None,
        cross_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        offset = cache.length if cache is not None else 0
        x = self.embed(tgt, "tgt", offset=offset)
        positions = self.position_inputs(x, offset)
        self_attentions, cross_attentions = [], []
        for i, layer in enumerate(self.layers):
            x, self_weights, cross_weights = layer(
                x,
                memory,
                self_mask,
                memory_mask,
                need_weights=output_attentions,
                cache=cache.layer(i) if cache is not None else None,
                cross_kv=cross_kv[i] if cross_kv is not None else None,
                **positions,
            )
            self_attentions.append(self_weights)
            cross_attentions.append(cross_weights)
        if cache is not None:
            cache.advance(tgt.size(1))
        if self.final_norm is not None:
            x = self.final_norm(x)
        return (x, self_attentions, cross_attentions) if output_attentions else x
