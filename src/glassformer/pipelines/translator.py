"""Text in, translation out: a trained ``Transformer`` with its tokenizers.

    Translator.load("runs/de-en").translate(["Im Anfang schuf Gott den Himmel und die Erde."], num_beams=4)

Sentences are sorted by length and translated in batches of at most ``batch_tokens`` source tokens, then put back
in their order. Each translation is decoded back to plain text (byte-level BPE is lossless).
"""

from __future__ import annotations

from pathlib import Path

import torch

from glassformer import runtime
from glassformer.data.parallel import token_batches
from glassformer.files import read_json
from glassformer.generation.seq2seq import translate_ids
from glassformer.models.quantization import Quantization
from glassformer.models.transformer import Transformer
from glassformer.pipelines.resolve import resolve_model
from glassformer.tokenizer import Tokenizer

SOURCE_TOKENIZER_FILE = "source_tokenizer.json"


def resolve_model_directory(path: str | Path) -> Path:
    """Deprecated: ``glassformer.pipelines.resolve_model``."""
    return resolve_model(path)


def load_tokenizers(directory: Path) -> tuple[Tokenizer, Tokenizer]:
    """(source, target) tokenizers saved beside a model; the same object when the vocabulary is joint."""
    target = Tokenizer.from_pretrained(directory)
    source_file = directory / SOURCE_TOKENIZER_FILE
    return (Tokenizer.from_pretrained(source_file) if source_file.is_file() else target), target


class Translator:
    def __init__(self, model: Transformer, source_tokenizer: Tokenizer, target_tokenizer: Tokenizer):
        self.model = model.eval()
        self.source_tokenizer = source_tokenizer
        self.target_tokenizer = target_tokenizer

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str | None = None,
        precision: str | None = None,
        quantization: Quantization | None = None,
    ) -> Translator:
        """A run (its best checkpoint) or model directory with its tokenizers, on ``device`` in ``precision``
        (default the CPU in float32; ``"auto"`` for what ``glassformer.runtime`` picks on this machine), quantized
        as ``quantization`` asks."""
        directory = resolve_model(path)
        model_type = read_json(directory / "config.json", "model config").get("model_type")
        if model_type != "transformer":
            raise ValueError(
                f"{directory} holds a {model_type!r} model, not a translation model; pass a `train translate` run"
            )
        model = Transformer.from_pretrained(directory)
        runtime.place_model(model, device, precision)
        if quantization is not None:
            quantization.apply(model)
        return cls(model, *load_tokenizers(directory))

    def encode_sources(self, texts: list[str]) -> list[list[int]]:
        c = self.model.config
        encoded = self.source_tokenizer.encode(texts, add_special_tokens=False)
        for number, (text, ids) in enumerate(zip(texts, encoded, strict=True), 1):
            if not text.strip():
                raise ValueError(f"text {number} is empty; give a sentence to translate")
            if len(ids) + 1 > c.max_seq_length:
                raise ValueError(
                    f"text {number} has {len(ids)} tokens and the model reads at most {c.max_seq_length - 1}; "
                    "split it into shorter sentences"
                )
        return [ids + [c.eos_token_id] for ids in encoded]

    def translate(
        self,
        texts: list[str],
        num_beams: int = 4,
        length_penalty: float = 1.0,
        batch_tokens: int = 6000,
        progress=None,
    ) -> list[str]:
        """Translate ``texts``; ``progress`` (e.g. a tqdm bar) is updated with the number of sentences done."""
        if not texts:
            return []
        sources = self.encode_sources(texts)
        order = sorted(range(len(texts)), key=lambda i: len(sources[i]))
        costs = [len(ids) * num_beams for ids in sources]  # rows of the decoder per sentence, times their length
        results: list[str] = [""] * len(texts)
        for batch in token_batches(costs, order, max(batch_tokens, max(costs))):
            src = torch.full((len(batch), max(len(sources[i]) for i in batch)), self.model.config.pad_token_id)
            for row, i in enumerate(batch):
                src[row, : len(sources[i])] = torch.tensor(sources[i])
            src = runtime.to_device(src, runtime.module_device(self.model))
            outputs = translate_ids(self.model, src, num_beams=num_beams, length_penalty=length_penalty)
            texts = self.target_tokenizer.batch_decode(outputs, skip_special_tokens=True)
            for i, text in zip(batch, texts, strict=True):
                results[i] = text.strip()
            if progress is not None:
                progress.update(len(batch))
        return results
