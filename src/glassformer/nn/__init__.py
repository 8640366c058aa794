"""The parts of the Transformer, one idea per file, each with its formula in the docstring."""

from glassformer.nn.attention import MultiHeadAttention, scaled_dot_product_attention
from glassformer.nn.cache import KVCache
from glassformer.nn.config import BlockConfig, StackConfig
from glassformer.nn.embedding import (
    LearnedPositionalEmbedding,
    PositionalEncoding,
    TokenEmbedding,
    sinusoidal_encoding,
)
from glassformer.nn.feedforward import PositionWiseFeedForward
from glassformer.nn.layers import DecoderLayer, EncoderLayer
from glassformer.nn.norm import LayerNorm, RMSNorm, guide_layer_norm, layer_norm_reference
from glassformer.nn.relative_position import RelativePositionBias
from glassformer.nn.rotary import RotaryEmbedding
from glassformer.nn.slot_cache import SlotCache
from glassformer.nn.stacks import Decoder, Encoder, Stack

__all__ = [
    "BlockConfig",
    "Decoder",
    "DecoderLayer",
    "Encoder",
    "EncoderLayer",
    "KVCache",
    "SlotCache",
    "LayerNorm",
    "LearnedPositionalEmbedding",
    "MultiHeadAttention",
    "PositionWiseFeedForward",
    "PositionalEncoding",
    "RMSNorm",
    "RelativePositionBias",
    "RotaryEmbedding",
    "Stack",
    "StackConfig",
    "TokenEmbedding",
    "guide_layer_norm",
    "layer_norm_reference",
    "scaled_dot_product_attention",
    "sinusoidal_encoding",
]
