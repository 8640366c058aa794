"""See inside: attention pages (HTML, self-contained), translation alignments, the guide's figures (matplotlib),
and all of them inline in a Jupyter notebook."""

from glassformer.visualization.alignment import Alignment, alignment_html, alignments, save_alignment_html
from glassformer.visualization.attention import MAX_TOKENS, AttentionView, attention_views
from glassformer.visualization.html import attention_html, save_attention_html, visualize
from glassformer.visualization.inline import InlinePage, alignment_view, head_view, model_view

__all__ = [
    "MAX_TOKENS",
    "Alignment",
    "AttentionView",
    "InlinePage",
    "alignment_html",
    "alignment_view",
    "alignments",
    "attention_html",
    "attention_views",
    "head_view",
    "model_view",
    "save_alignment_html",
    "save_attention_html",
    "visualize",
]
