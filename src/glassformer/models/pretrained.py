"""``save_pretrained`` / ``from_pretrained`` for every glassformer model, in glassformer's own format."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Self

from glassformer.checkpoints import load_state_dict_checked, read_checkpoint, write_checkpoint
from glassformer.models.config import ModelConfig


class PretrainedMixin:
    """Adds checkpoint I/O to an ``nn.Module`` that has ``self.config`` and a ``config_class``."""

    config_class: type[ModelConfig]
    config: ModelConfig

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``model.safetensors`` into ``directory``."""
        from glassformer._version import __version__

        config = {**self.config.to_dict(), "glassformer_version": __version__}
        return write_checkpoint(directory, config, self.state_dict())

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> Self:
        """Build the model from ``directory``'s config and load its weights; returned in eval mode."""
        config_dict, tensors = read_checkpoint(directory)
        model = cls(cls.config_class.from_dict(config_dict))
        load_state_dict_checked(model, tensors)
        return model.eval()
