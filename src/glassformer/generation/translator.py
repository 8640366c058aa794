"""Moved to ``glassformer.pipelines.translator``, with the other text-in/text-out front ends; this name
keeps working."""

from glassformer.pipelines.translator import SOURCE_TOKENIZER_FILE, Translator, load_tokenizers, resolve_model_directory  # noqa: F401
