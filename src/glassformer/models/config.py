"""What every model config shares: a plain dataclass that round-trips through ``config.json``."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar


@dataclasses.dataclass
class ModelConfig:
    """Base of the per-model configs. ``model_type`` names the model class a config belongs to."""

    model_type: ClassVar[str] = ""

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
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown {cls.__name__} field(s) {unknown}; the checkpoint was written by a different "
                "glassformer version or edited by hand"
            )
        return cls(**data)
