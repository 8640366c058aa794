"""Text in, text out: a model together with its tokenizer, opened by name through one resolver.

Translator        a translation run: sentences in, translations out (beam search)
TextClassifier    a classifier run or model: texts in, labels and probabilities out
SentenceEncoder   a BERT / sentence-transformers encoder: texts in, normalized embeddings out
load_language_model   a decoder-only run, checkpoint, GGUF file or shortcut, with its tokenizer
resolve_model     run directory / model directory / file / shortcut / cache name -> what to open
"""

from glassformer.pipelines.language_model import load_language_model
from glassformer.pipelines.resolve import resolve_model
from glassformer.pipelines.sentence_encoder import SentenceEncoder
from glassformer.pipelines.text_classifier import Prediction, TextClassifier
from glassformer.pipelines.translator import Translator

__all__ = ["Prediction", "SentenceEncoder", "TextClassifier", "Translator", "load_language_model", "resolve_model"]
