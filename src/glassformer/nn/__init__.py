"""The parts of the Transformer, one idea per file, each with its formula in the docstring."""

from glassformer.nn.attention import MultiHeadAttention, scaled_dot_product_attention
from glassformer.nn.embedding import (
    LearnedPositionalEmbedding,
    PositionalEncoding,
    TokenEmbedding,
    sinusoidal_encoding,
)
from glassformer.nn.feedforward import PositionWiseFeedForward
from glassformer.nn.layers import DecoderLayer, EncoderLayer
from glassformer.nn.norm import LayerNorm, guide_layer_norm, layer_norm_reference
from glassformer.nn.stacks import Decoder, Encoder

__all__ = [
    "Decoder",
    "DecoderLayer",
    "Encoder",
    "EncoderLayer",
    "LayerNorm",
    "LearnedPositionalEmbedding",
    "MultiHeadAttention",
    "PositionWiseFeedForward",
    "PositionalEncoding",
    "TokenEmbedding",
    "guide_layer_norm",
    "layer_norm_reference",
    "scaled_dot_product_attention",
    "sinusoidal_encoding",
]
