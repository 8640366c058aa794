"""See inside: attention pages (HTML, self-contained) and the guide's figures (matplotlib)."""

from glassformer.visualization.attention import MAX_TOKENS, AttentionView, attention_views
from glassformer.visualization.html import attention_html, save_attention_html, visualize

__all__ = ["MAX_TOKENS", "AttentionView", "attention_html", "attention_views", "save_attention_html", "visualize"]
