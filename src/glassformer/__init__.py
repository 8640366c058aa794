"""glassformer: a Transformer library you can read top to bottom.

Public names: the seq2seq ``Transformer``, the decoder-only ``GPT``, the encoder-only ``Bert`` (and its sequence
classifier), their configs and the ``Tokenizer``; the
parts live in ``glassformer.nn``, the masks in ``glassformer.masks``, decoding in ``glassformer.generation``.
"""

from glassformer import cpu

cpu.apply()  # GLASSFORMER_CPU narrows torch's and oneDNN's kernels: before either first runs

from glassformer._version import __version__  # noqa: E402
from glassformer.models.bert import Bert, BertConfig, BertForSequenceClassification  # noqa: E402
from glassformer.models.gpt import GPT, GPTConfig  # noqa: E402
from glassformer.models.transformer import Transformer, TransformerConfig  # noqa: E402
from glassformer.tokenizer import Tokenizer  # noqa: E402

__all__ = [
    "Bert",
    "BertConfig",
    "BertForSequenceClassification",
    "GPT",
    "GPTConfig",
    "Tokenizer",
    "Transformer",
    "TransformerConfig",
    "__version__",
]
