"""Quantizing a whole model: every ``Linear`` of its layers to int8 or int4 (``glassformer.nn.quantization``), the
token embeddings and the output layer only as the user chooses.

    model.quantize("int4", group_size=32)                    layers int4; embeddings and output layer as they are
    model.quantize("int8", embeddings="int8")                 the embedding table and the output layer int8 too
    model.quantize("int4", embeddings="float")                a table loaded quantized (GGUF) back to float32
    model.quantize("int8", activations="int8")                and many rows' activations int8 too (W8A8, dynamic)
    model.quantize("int8", activations="bf16")                products of 4+ rows in bfloat16 (a float head's too),
                                                              the key/value cache in bfloat16

A tied output layer is the embedding table: both hold one ``QuantizedWeight`` (one copy, saved once). A quantized
checkpoint is config.json (with a ``quantization`` entry describing it) + model.safetensors holding each quantized
weight as ``<module>.quantized.{codes,scales,offsets}``; ``quantized_like`` rebuilds that structure from the
tensors' names and shapes before they are loaded.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from glassformer.backends.cpu.quantized import dequantize
from glassformer.nn.embedding import TokenEmbedding
from glassformer.nn.linear import Linear
from glassformer.nn.quantization import KINDS, QuantizedWeight, check_activations, check_quantization

EMBEDDING_CHOICES = (None, "float", *KINDS)


@dataclasses.dataclass(frozen=True)
class Quantization:
    """What ``--quantize``, ``--group-size``, ``--quantize-embeddings`` and ``--quantize-activations`` ask for;
    ``apply`` is ``quantize``."""

    kind: str | None  # None: nothing quantized (a GGUF file dequantized to float32)
    group_size: int | None = None
    embeddings: str | None = None
    # "int8": int8 matrices multiply many rows with int8 activations; "bf16": every quantized matrix takes 4 or more
    # rows in bfloat16 (where the CPU multiplies it)
    activations: str | None = None

    def apply(self, model: nn.Module) -> nn.Module:
        if self.kind is None:
            return model
        return quantize(model, self.kind, self.group_size, self.embeddings, self.activations)


def _outputs(model: nn.Module) -> list[Linear]:
    layers = [getattr(model, name, None) for name in getattr(model, "output_layers", ())]
    return [layer for layer in layers if layer is not None]


def _tables(model: nn.Module) -> list[list[nn.Module]]:
    """The embedding tables and output layers, grouped by the weight they share (a tie is one group)."""
    groups: dict[int, list[nn.Module]] = {}
    for module in [m for m in model.modules() if isinstance(m, TokenEmbedding)] + _outputs(model):
        table = module.quantized if module.quantized is not None else module.weight
        groups.setdefault(id(table), []).append(module)
    return list(groups.values())


def _set_table(modules: list[nn.Module], table: QuantizedWeight | nn.Parameter) -> None:
    for module in modules:
        if isinstance(table, QuantizedWeight):
            if isinstance(module, TokenEmbedding):
                module.set_quantized(table)
            else:
                module.quantized = table
                if module.weight is not None:
                    module.drop_weight()
        elif isinstance(module, TokenEmbedding):
            module.quantized, module.embedding.weight = None, table
        else:
            module.quantized, module.weight = None, table


def _float_table(module: nn.Module) -> torch.Tensor:
    if module.quantized is not None:
        return module.quantized.dequantize()
    return module.weight.detach()


def quantize(
    model: nn.Module,
    kind: str,
    group_size: int | None = None,
    embeddings: str | None = None,
    activations: str | None = None,
) -> nn.Module:
    """Quantize ``model`` in place (and return it): every ``Linear`` but the output layer to ``kind`` with groups of
    ``group_size`` along the input; ``embeddings`` (None: as they are, "float", "int8" or "int4") for the token
    embeddings and the output layer; ``activations`` "int8": every int8 matrix with one scale per output row (an int8
    output layer too) multiplies many rows with int8 activations (``glassformer.nn.quantization``); int8 in groups
    (a GGUF file's Q8_0 table, kept as stored) keeps float activations; "bf16": every quantized matrix (the output
    layer too) multiplies 4 or more rows with bfloat16 activations where the CPU multiplies bfloat16 — a float output
    layer as ``Linear.bf16_products`` says, its output rounded to bfloat16 as well —, and the model's key/value caches
    keep their keys and values in bfloat16 (``cache_dtype``: half the memory, and half the bytes attention reads).
    Every shape is checked before anything changes."""
    check_activations(activations, kind, group_size)
    if embeddings not in EMBEDDING_CHOICES:
        raise ValueError(f"unknown embeddings precision {embeddings!r}; choose float, int8 or int4 (or leave it)")
    outputs = {id(m) for m in _outputs(model)}
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, Linear) and id(m) not in outputs]
    layers = [(n, m) for n, m in layers if m.quantized is None and m.weight is not None]
    for name, layer in layers:
        check_quantization(kind, group_size, layer.in_features, f"layer {name}")
    tables = _tables(model) if embeddings is not None else []
    if embeddings in KINDS:
        for group in tables:
            size = group[0].embedding.embedding_dim if isinstance(group[0], TokenEmbedding) else group[0].in_features
            check_quantization(embeddings, group_size, size, "the embedding table")
    per_row = [w for w in _weights(model) if w.kind == "int8" and w.group_size == w.in_features]
    if activations == "int8" and not (per_row or layers or embeddings == "int8"):  # e.g. every matrix already int4
        raise ValueError("no int8 matrix with one scale per output row to take int8 activations in this model")
    for _, layer in layers:
        layer.quantize(kind, group_size)
    for group in tables:
        weight = _float_table(group[0])
        if embeddings == "float":
            _set_table(group, nn.Parameter(weight.float(), requires_grad=False))
        else:
            _set_table(group, QuantizedWeight.from_float(weight, embeddings, group_size))
    for weight in _weights(model):
        per_row = weight.kind == "int8" and weight.group_size == weight.in_features
        weight.set_activations(activations if per_row or activations == "bf16" else None)
    for layer in _outputs(model):  # an output layer left float takes bfloat16 products as the quantized ones do
        layer.bf16_products = activations == "bf16" and layer.weight is not None
    model.cache_dtype = torch.bfloat16 if activations == "bf16" else None  # the keys and values are activations too
    return model


def _weights(model: nn.Module) -> list[QuantizedWeight]:
    return [m for m in model.modules() if isinstance(m, QuantizedWeight)]


def describe(model: nn.Module) -> dict | None:
    """The ``quantization`` entry of config.json: ``{"kind", "group_size", "embeddings"}`` (None if nothing is)."""
    outputs = {id(m) for m in _outputs(model)}
    layers = [m.quantized for m in model.modules() if isinstance(m, Linear) and id(m) not in outputs and m.quantized]
    tables = [m.quantized for m in model.modules() if isinstance(m, TokenEmbedding | Linear) and m.quantized]
    tables = [t for t in tables if all(t is not q for q in layers)]
    if not layers and not tables:
        return None

    def spec(q: QuantizedWeight) -> tuple[str, int | str]:
        return q.kind, "per output channel" if q.group_size == q.in_features else q.group_size

    kinds = sorted({spec(q) for q in layers}, key=str)
    embedding = sorted({spec(q) for q in tables}, key=str)
    return {
        "method": "glassformer weight-only",
        "kind": kinds[0][0] if len(kinds) == 1 else "mixed",
        "group_size": kinds[0][1] if len(kinds) == 1 else None,
        "embeddings": f"{embedding[0][0]} (group {embedding[0][1]})" if embedding else "float",
    }


def quantized_like(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Give ``model`` the quantized weights that ``tensors`` hold (``<module>.quantized.codes`` and its scales), empty
    and on the model's device, so that loading the tensors fills them; tied modules share one."""
    prefixes = [name.removesuffix(".quantized.codes") for name in tensors if name.endswith(".quantized.codes")]
    if not prefixes:
        return
    groups = {id(m): group for group in _tables(model) for m in group}
    for prefix in prefixes:
        module = model.get_submodule(prefix)
        codes, scales = tensors[f"{prefix}.quantized.codes"], tensors.get(f"{prefix}.quantized.scales")
        if scales is None or scales.dim() != 2 or scales.size(1) == 0:
            raise ValueError(f"the checkpoint's {prefix}.quantized.codes comes without valid scales")
        kind = "int8" if codes.dtype == torch.int8 else "int4"
        n, k = (
            (module.embedding.num_embeddings, module.embedding.embedding_dim)
            if isinstance(module, TokenEmbedding)
            else (module.out_features, module.in_features)
        )
        device = module.weight.device if module.weight is not None else torch.device("cpu")
        table = QuantizedWeight(n, k, kind, max(k // scales.size(1), 1), device=device)
        if isinstance(module, Linear) and id(module) not in groups:
            module.quantized = table
            module.drop_weight()
        else:
            _set_table(groups.get(id(module), [module]), table)


def dequantized_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights in float32 under their float names (for formats that store no quantization)."""
    out, seen = {}, set()
    for name, tensor in model.state_dict().items():
        if ".quantized." not in name:
            out[name] = tensor
        elif name.endswith(".quantized.codes"):
            prefix = name.removesuffix(".quantized.codes")
            module = model.get_submodule(prefix)
            if id(module.quantized) in seen:
                continue  # a tied output layer: stored once, as the embedding
            seen.add(id(module.quantized))
            weight_name = f"{prefix}.embedding.weight" if isinstance(module, TokenEmbedding) else f"{prefix}.weight"
            q = module.quantized
            out[weight_name] = dequantize(q.codes, q.scales, q.offsets)
    return out
