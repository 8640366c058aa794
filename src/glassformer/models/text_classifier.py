"""Moved to ``glassformer.pipelines.text_classifier``, with the other text-in/text-out front ends; this name
keeps working."""

from glassformer.pipelines.text_classifier import Prediction, TextClassifier  # noqa: F401
