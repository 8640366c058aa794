"""Moved to ``glassformer.chat_template`` (chat templates belong to the tokenizer); this name keeps working."""

from glassformer.chat_template import render_chat_template  # noqa: F401
