"""Assemblies of the parts; a variant is a config field, not a subclass."""

from glassformer.models.gpt import GPT, GPTConfig
from glassformer.models.transformer import Transformer, TransformerConfig

__all__ = ["GPT", "GPTConfig", "Transformer", "TransformerConfig"]
