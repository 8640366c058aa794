"""Moved to ``glassformer.pipelines.language_model``, with the other text-in/text-out front ends; this name
keeps working."""

from glassformer.pipelines.language_model import load_language_model, load_tokenizer, run_checkpoint  # noqa: F401
