"""glassformer: a Transformer library you can read top to bottom.

Public names: the seq2seq ``Transformer`` and its ``TransformerConfig``; the parts live in ``glassformer.nn``
and the masks in ``glassformer.masks``.
"""

__version__ = "0.1.0"

from glassformer.models.transformer import Transformer, TransformerConfig  # noqa: E402

__all__ = ["Transformer", "TransformerConfig", "__version__"]
