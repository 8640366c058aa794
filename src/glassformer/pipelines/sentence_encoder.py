"""Sentence embeddings from a BERT encoder, as sentence-transformers computes them.

    e = normalize(pool(Bert(tokens)))      pool = mean of the real tokens' vectors (or the [CLS] vector)
    cos(a, b) = e_a · e_b                  for L2-normalized embeddings

A sentence-transformers directory says how: ``1_Pooling/config.json`` (the pooling mode), ``modules.json``
(whether a ``Normalize`` step follows) and ``sentence_bert_config.json`` (the length texts are cut to).
"""

from __future__ import annotations

import json
import os

import torch
import torch.nn.functional as F

from glassformer import runtime
from glassformer.files import read_json
from glassformer.models.bert import Bert, mean_pooling
from glassformer.models.quantization import Quantization
from glassformer.nn.linear import packed_weights
from glassformer.pipelines.resolve import resolve_model
from glassformer.tokenizer import Tokenizer

POOLINGS = ("mean", "cls")


class SentenceEncoder:
    """``embed(texts)`` -> ``(len(texts), d_model)`` float32 embeddings; ``similarity(texts)`` -> cosine table."""

    def __init__(
        self, model: Bert, tokenizer: Tokenizer, pooling: str = "mean", normalize: bool = True, max_length: int = 256
    ):
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of {POOLINGS}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = normalize
        self.max_length = min(max_length, model.config.max_seq_length)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        device: str | None = None,
        precision: str | None = None,
        quantization: Quantization | None = None,
    ) -> SentenceEncoder:
        """A sentence-transformers directory (or ``minilm``), or any BERT directory (then: mean pooling,
        normalized, texts cut to the model's maximum length); on ``device`` in ``precision`` (default the CPU in
        float32; ``"auto"`` for what ``glassformer.runtime`` picks on this machine), quantized as ``quantization``
        asks."""
        directory = resolve_model(path)
        model = Bert.from_pretrained(directory)
        runtime.place_model(model, device, precision)
        if quantization is not None:
            quantization.apply(model)
        pooling, normalize, max_length = "mean", True, model.config.max_seq_length
        pooling_file = directory / "1_Pooling" / "config.json"
        if pooling_file.is_file():
            settings = read_json(pooling_file, "pooling config")
            modes = [
                k.removeprefix("pooling_mode_") for k, v in settings.items() if k.startswith("pooling_mode_") and v
            ]
            modes = ["mean" if m == "mean_tokens" else "cls" if m == "cls_token" else m for m in modes]
            if len(modes) != 1 or modes[0] not in POOLINGS:
                raise ValueError(f"{pooling_file} asks for pooling {modes}; glassformer supports one of {POOLINGS}")
            pooling = modes[0]
        modules_file = directory / "modules.json"
        if modules_file.is_file():
            normalize = any(
                m.get("type", "").endswith("Normalize") for m in json.loads(modules_file.read_text(encoding="utf-8"))
            )
        config_file = directory / "sentence_bert_config.json"
        if config_file.is_file():
            max_length = read_json(config_file, "sentence-transformers config").get("max_seq_length", max_length)
        return cls(model, Tokenizer.from_pretrained(directory), pooling, normalize, max_length)

    @torch.no_grad()
    def embed(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        """``(len(texts), d_model)``; texts are cut to ``max_length`` tokens, as sentence-transformers does."""
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            raise ValueError("no texts to embed")
        # similar lengths together: less padding; the rows are put back in order at the end
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), self.model.config.d_model)
        device = runtime.module_device(self.model)
        with packed_weights(self.model):  # oneDNN's weight layout: faster inference on the CPU (nn/linear.py)
            for start in range(0, len(texts), batch_size):
                index = order[start : start + batch_size]
                batch = self.tokenizer.batch_encode(
                    [texts[i] for i in index], max_length=self.max_length, truncation=True
                )
                batch = runtime.to_device(batch, device)
                hidden = self.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
                pooled = mean_pooling(hidden, batch["attention_mask"]) if self.pooling == "mean" else hidden[:, 0]
                pooled = pooled.float().cpu()
                out[index] = F.normalize(pooled, dim=-1) if self.normalize else pooled
        return out

    def similarity(self, texts: list[str]) -> torch.Tensor:
        """Cosine similarity of every pair, ``(n, n)``."""
        embeddings = F.normalize(self.embed(texts), dim=-1)
        return embeddings @ embeddings.T


def format_similarity_table(texts: list[str], table: torch.Tensor, width: int = 28) -> str:
    """A plain-text table: one row and one numbered column per text."""
    labels = [t if len(t) <= width else t[: width - 1] + "…" for t in texts]
    header = " " * (width + 4) + "".join(f"{f'[{j + 1}]':>8s}" for j in range(len(texts)))
    rows = [header]
    for i, label in enumerate(labels):
        rows.append(f"[{i + 1}] {label:<{width}s}" + "".join(f"{table[i, j].item():8.3f}" for j in range(len(texts))))
    return "\n".join(rows)
