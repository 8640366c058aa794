"""A decoder-only model together with its tokenizer: what ``generate``, ``chat``, the attention page and the
figures open.

``load_language_model(path)`` accepts a ``train lm`` run (its ``best/`` checkpoint, else ``last/``), a glassformer
GPT checkpoint, a Hugging Face GPT-2 or Llama directory, a GGUF file, or a shortcut (``smollm2``), and loads the
tokenizer saved beside the weights — GPT-2's own when a GPT-2-sized checkpoint ships none.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from glassformer import runtime
from glassformer.checkpoints.gguf import forget_gguf
from glassformer.models.gpt import GPT
from glassformer.models.quantization import Quantization
from glassformer.pipelines.resolve import resolve_model
from glassformer.tokenizer import Tokenizer

GPT2_VOCAB_SIZE = 50257


def run_checkpoint(path: str | os.PathLike) -> Path:
    """Deprecated: ``glassformer.pipelines.resolve_model``."""
    return resolve_model(path)


def load_tokenizer(directory: str | os.PathLike, vocab_size: int) -> Tokenizer:
    try:
        return Tokenizer.from_pretrained(directory)
    except FileNotFoundError:
        if vocab_size == GPT2_VOCAB_SIZE:  # a GPT-2 checkpoint without tokenizer files: GPT-2's own tokenizer
            return Tokenizer.gpt2()
        raise


def load_language_model(
    path: str | os.PathLike,
    dtype: torch.dtype | None = None,
    *,
    device: str | None = None,
    precision: str | None = None,
    quantization: Quantization | None = None,
) -> tuple[GPT, Tokenizer]:
    """``(model in eval mode, tokenizer)`` on ``device`` in ``precision`` (default the CPU in float32; ``"auto"`` for
    what ``glassformer.runtime`` picks on this machine), its weights quantized as ``quantization`` asks (a GGUF
    file's quantized tensors are used as they are). ``dtype`` (e.g. ``torch.bfloat16``) is the older spelling of
    ``precision``."""
    directory = resolve_model(path)
    model = GPT.from_pretrained(directory, dtype=dtype, quantization=quantization)
    if device is not None or precision is not None:
        runtime.place_model(model, device, precision)
    tokenizer = load_tokenizer(directory, model.config.vocab_size)
    forget_gguf()  # a GGUF file was parsed once for both; its metadata is not needed any more
    runtime.release_free_memory()
    return model, tokenizer
