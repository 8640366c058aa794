"""glassformer: a Transformer library you can read top to bottom.

Public names: the seq2seq ``Transformer``, the decoder-only ``GPT``, their configs and the ``Tokenizer``; the
parts live in ``glassformer.nn``, the masks in ``glassformer.masks``, decoding in ``glassformer.generation``.
"""

__version__ = "0.1.0"

from glassformer.models.gpt import GPT, GPTConfig  # noqa: E402
from glassformer.models.transformer import Transformer, TransformerConfig  # noqa: E402
from glassformer.tokenizer import Tokenizer  # noqa: E402

__all__ = ["GPT", "GPTConfig", "Tokenizer", "Transformer", "TransformerConfig", "__version__"]
