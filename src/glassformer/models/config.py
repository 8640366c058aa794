"""What every model config shares: a plain dataclass that round-trips through ``config.json``."""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any, ClassVar

# the special tokens' ids were called pad_id, bos_id, ... before they took transformers' names
OLD_NAMES = {"pad_id": "pad_token_id", "bos_id": "bos_token_id", "eos_id": "eos_token_id", "unk_id": "unk_token_id"}


def _renamed(old: str) -> str:
    new = OLD_NAMES[old]
    warnings.warn(f"{old} is now called {new}", DeprecationWarning, stacklevel=3)
    return new


def model_config(cls):
    """``@dataclasses.dataclass`` for a model's config, whose constructor also takes the older names of its fields
    (``pad_id=`` for ``pad_token_id=``, with a ``DeprecationWarning``)."""
    cls = dataclasses.dataclass(cls)
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args, **fields):
        init(self, *args, **{(_renamed(k) if k in OLD_NAMES else k): v for k, v in fields.items()})

    cls.__init__ = __init__
    return cls


@dataclasses.dataclass
class ModelConfig:
    """Base of the per-model configs. ``model_type`` names the model class a config belongs to."""

    model_type: ClassVar[str] = ""

    def __getattr__(self, name: str):  # only for names that are not attributes: the older field names
        if name in OLD_NAMES:
            return getattr(self, _renamed(name))
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": self.model_type, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        data = dict(data)
        kind = data.pop("model_type", cls.model_type)
        if kind != cls.model_type:
            raise ValueError(
                f"this checkpoint holds a {kind!r} model, not a {cls.model_type!r}; load it with that model's class"
            )
        data.pop("glassformer_version", None)
        data.pop("quantization", None)  # describes the weights (models.quantization), not the architecture
        data = {OLD_NAMES.get(k, k): v for k, v in data.items()}  # checkpoints saved before the renaming
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown {cls.__name__} field(s) {unknown}; the checkpoint was written by a different "
                "glassformer version or edited by hand"
            )
        return cls(**data)
