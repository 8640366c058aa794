"""Moved to ``glassformer.pipelines.sentence_encoder``, with the other text-in/text-out front ends; this name
keeps working."""

from glassformer.pipelines.sentence_encoder import POOLINGS, SentenceEncoder, format_similarity_table  # noqa: F401
