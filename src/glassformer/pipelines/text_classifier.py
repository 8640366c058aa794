"""Text in, label out: a ``Tokenizer`` and a ``BertForSequenceClassification`` together.

    p(label | text) = softmax(logits)        logits = BertForSequenceClassification(tokens of text)

``TextClassifier.load(run_or_model_dir)`` opens a ``train classify`` run (its ``best/`` checkpoint) or any
classifier directory (glassformer or Hugging Face format) that holds its tokenizer.
"""

from __future__ import annotations

import dataclasses
import os
from contextlib import nullcontext

import torch

from glassformer import runtime
from glassformer.models.bert import BertForSequenceClassification
from glassformer.models.quantization import Quantization
from glassformer.nn.linear import packed_weights
from glassformer.pipelines.resolve import resolve_model
from glassformer.tokenizer import Tokenizer


@dataclasses.dataclass
class Prediction:
    text: str
    label: str
    probability: float
    probabilities: dict[str, float]


class TextClassifier:
    def __init__(self, model: BertForSequenceClassification, tokenizer: Tokenizer, max_length: int | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length or min(tokenizer.model_max_length or 512, model.config.max_seq_length)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        device: str | None = None,
        precision: str | None = None,
        quantization: Quantization | None = None,
    ) -> TextClassifier:
        """A run (its best checkpoint) or classifier directory with its tokenizer, on ``device`` in ``precision``
        (default the CPU in float32; ``"auto"`` for what ``glassformer.runtime`` picks on this machine), quantized
        as ``quantization`` asks."""
        directory = resolve_model(path)
        model = BertForSequenceClassification.from_pretrained(directory)
        runtime.place_model(model, device, precision)
        if quantization is not None:
            quantization.apply(model)
        return cls(model, Tokenizer.from_pretrained(directory))

    @property
    def labels(self) -> list[str]:
        return self.model.config.label_names

    def logits(self, texts: list[str], batch_size: int = 64, truncation: bool = True) -> torch.Tensor:
        """``(len(texts), num_labels)`` float32 logits, in the model's current mode (eval for inference)."""
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            raise ValueError("no texts to classify")
        for i, text in enumerate(texts):
            if not text.strip():
                raise ValueError(f"text {i} is empty; give some words to classify")
        # similar lengths together: less padding; the rows are put back in order at the end
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), self.model.config.num_labels)
        inference = not torch.is_grad_enabled()  # then oneDNN's weight layout is faster (nn/linear.py)
        device = runtime.module_device(self.model)
        with packed_weights(self.model) if inference else nullcontext():
            for start in range(0, len(texts), batch_size):
                index = order[start : start + batch_size]
                batch = self.tokenizer.batch_encode(
                    [texts[i] for i in index], max_length=self.max_length, truncation=truncation
                )
                batch = runtime.to_device(batch, device)
                logits = self.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
                out[index] = logits.float().cpu()
        return out

    @torch.no_grad()
    def predict(self, texts: list[str], batch_size: int = 64) -> list[Prediction]:
        """The most probable label of each text and the probabilities of all labels."""
        texts = [texts] if isinstance(texts, str) else texts
        self.model.eval()
        probabilities = torch.softmax(self.logits(texts, batch_size), dim=-1)
        labels = self.labels
        return [
            Prediction(text, labels[int(p.argmax())], float(p.max()), dict(zip(labels, map(float, p), strict=True)))
            for text, p in zip(texts, probabilities, strict=True)
        ]
