"""``save_pretrained`` / ``from_pretrained`` for every glassformer model, in glassformer's own format."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Self

import torch

from glassformer.checkpoints import load_state_dict_checked, read_checkpoint, write_checkpoint
from glassformer.models.config import ModelConfig
from glassformer.models.quantization import describe, quantize, quantized_like


class PretrainedMixin:
    """Adds checkpoint I/O to an ``nn.Module`` that has ``self.config`` and a ``config_class``."""

    config_class: type[ModelConfig]
    config: ModelConfig
    # what its key/value caches hold keys and values in (None: the model's dtype); quantize(activations="bf16") sets
    # bfloat16
    cache_dtype: torch.dtype | None = None

    def save_pretrained(self, directory: str | os.PathLike, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """Write ``config.json`` + ``model.safetensors`` into ``directory``: the model's weights, or ``state_dict``
        (e.g. the whole weights of a model sharded over processes, gathered by ``distributed.full_state_dict``)."""
        from glassformer._version import __version__

        config = {**self.config.to_dict(), "glassformer_version": __version__}
        if describe(self) is not None:
            config["quantization"] = describe(self)
        return write_checkpoint(directory, config, self.state_dict() if state_dict is None else state_dict)

    def quantize(
        self, kind: str, group_size: int | None = None, embeddings: str | None = None, activations: str | None = None
    ) -> Self:
        """Quantize the weights in place (``glassformer.models.quantization.quantize``) and return the model."""
        return quantize(self, kind, group_size, embeddings, activations)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> Self:
        """Build the model from ``directory``'s config and load its weights; returned in eval mode."""
        config_dict, tensors = read_checkpoint(directory)
        model = build_for_weights(cls, cls.config_class.from_dict(config_dict), tensors)
        load_state_dict_checked(model, tensors)
        return model.eval()


def build_for_weights(cls, config: ModelConfig, tensors: dict[str, torch.Tensor]):
    """``cls(config)`` — after checking, on the ``meta`` device (shapes only, no memory), that the config describes
    about as many weights as the file holds: a small file whose config asks for a huge model is refused before
    anything is allocated, naming what was asked for. (``load_state_dict_checked`` then names every missing,
    unexpected or mis-shaped tensor.) When the file holds every weight, the model is not initialized at random
    first: its parameters are uninitialized memory until ``load_state_dict_checked`` fills them."""
    layers = max(getattr(config, name, None) or 0 for name in ("num_layers", "num_decoder_layers"))
    if layers > len(tensors):
        raise ValueError(
            f"the config asks for {layers} layers but the weights hold only {len(tensors)} tensors; "
            "the config does not belong to these weights"
        )
    with torch.device("meta"):
        probe = cls(config)
    quantized_like(probe, tensors)  # a quantized checkpoint: its layers get codes and scales instead of a weight
    declared = sum(p.numel() for p in probe.parameters()) + sum(b.numel() for b in probe.buffers())
    present = sum(t.numel() for t in tensors.values())
    if declared > 2 * present + (1 << 20):  # room for a new classification head, never for a different model
        raise ValueError(
            f"the config asks for {declared:,} parameters but the weights hold {present:,} values; "
            "the config does not belong to these weights"
        )
    first: dict[int, str] = {}  # a tied tensor's first name (a shared parameter, or a shared quantized table)
    tied = {n: first[id(t)] for n, t in probe.state_dict(keep_vars=True).items() if first.setdefault(id(t), n) != n}
    needed = {name: t for name, t in probe.state_dict().items() if name not in tied}
    if any(name not in tensors or tensors[name].shape != t.shape for name, t in needed.items()):
        model = cls(config)  # some weights are new (a classification head): they need their initialization
        quantized_like(model, tensors)
        return model
    # every weight comes from the file: skip the random initialization (seconds for a 100M-parameter model) —
    # give the shapes memory, and recompute the tables that are not stored (rotary angles, sinusoids)
    probe.to_empty(device="cpu")
    parameters = dict(probe.named_parameters(remove_duplicate=False))
    for alias, original in tied.items():  # to_empty gives each module a parameter of its own: tie them again
        if alias not in parameters:
            continue  # a buffer of a shared module: still shared
        owner, _, attribute = alias.rpartition(".")
        setattr(probe.get_submodule(owner), attribute, probe.get_parameter(original))
    for module in probe.modules():
        if hasattr(module, "reset_buffers"):
            module.reset_buffers()
    return probe
