"""glassformer's own checkpoint: a directory with ``config.json`` and ``model.safetensors``.

Weights are only ever read with ``safetensors`` — never unpickled: a pickle file can run arbitrary code when
loaded. Files are written to a temporary name, fsynced and renamed into place (``glassformer.files.write_atomically``),
so an interrupted save never leaves a half-written file behind the old one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from glassformer.files import read_json, write_atomically

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def tied_aliases(state_dict: dict[str, torch.Tensor]) -> dict[str, str]:
    """Names whose tensor shares storage with an earlier name (tied weights): ``{alias: original}``."""
    first_by_storage: dict[tuple[int, int, tuple[int, ...]], str] = {}
    aliases = {}
    for name, tensor in state_dict.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in first_by_storage:
            aliases[name] = first_by_storage[key]
        else:
            first_by_storage[key] = name
    return aliases


def write_checkpoint(directory: str | os.PathLike, config: dict, state_dict: dict[str, torch.Tensor]) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created if needed).

    Tied weights are stored once, under their first name; ``load_state_dict_checked`` restores the tie.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    aliases = tied_aliases(state_dict)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items() if k not in aliases}
    write_atomically(directory / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))

    def write_config(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
            f.write("\n")

    write_atomically(directory / CONFIG_NAME, write_config)
    return directory


def read_checkpoint(directory: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read ``(config dict, tensors)`` from a checkpoint directory. Refuses pickle files."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no checkpoint directory at {directory}; pass the directory save_pretrained wrote")
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{directory} has no {CONFIG_NAME}; it is not a glassformer checkpoint directory")
    config = read_json(config_path, "checkpoint config")
    if not weights_path.is_file():
        pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise ValueError(
                f"{directory} holds only pickle weights ({', '.join(pickles)}); glassformer never unpickles files "
                f"(they can run code) — convert them to {WEIGHTS_NAME} with safetensors"
            )
        raise FileNotFoundError(f"{directory} has no {WEIGHTS_NAME}; the checkpoint is incomplete")
    return config, load_safetensors(weights_path)


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file; a truncated or corrupt file is one ``ValueError`` naming it."""
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path} is not a valid safetensors file ({e}); the file is damaged or incomplete") from None


def load_state_dict_checked(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Load ``tensors`` into ``model`` after checking that every name and shape fits.

    Raises one ``ValueError`` that names all missing, unexpected and mis-shaped tensors. Tied weights
    (aliases of another tensor) may be absent: they are filled through the tie.
    """
    expected = model.state_dict()
    aliases = tied_aliases(expected)
    missing = [k for k in expected if k not in tensors and k not in aliases]
    unexpected = [k for k in tensors if k not in expected]
    misshaped = [
        f"{k} {tuple(v.shape)} (model wants {tuple(expected[k].shape)})"
        for k, v in tensors.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or misshaped:
        parts = []
        for label, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if names:
                shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
                parts.append(f"{label}: {shown}")
        raise ValueError(
            f"checkpoint does not fit the model's config — {'; '.join(parts)}; "
            "load it with the config it was saved with"
        )
    model.load_state_dict(tensors, strict=False)
