"""The affine map y = x Wᵀ + b (optionally followed by an activation, y = act(x Wᵀ + b)), with fast CPU paths.

``Linear`` is ``torch.nn.Linear`` (same parameters, same names, weight ``(out_features, in_features)``) whose
forward calls ``linear`` below. Training, float32 and large batches run ``torch.nn.functional.linear``
unchanged. With bfloat16/float16 weights, no gradient recorded and only a few rows — one token per sequence
while generating — the CPU kernel for ``x Wᵀ`` runs well below memory bandwidth, so the same product is computed
in another order:

    1 row:        W x        (torch.mv, a matrix-vector product)
    2-16 rows:    (W xᵀ)ᵀ    (a GEMM that reads the weight in its stored order)

Measured with ``bench/kernels.py`` (GPT-2 124M's 49 matrices in turn, so the weights stream from memory as in
decoding) on a 2-core Intel Xeon with AMX: 1.4x faster than ``F.linear`` in bfloat16 at 1 and 8 rows. On a
2-core AMD EPYC (AVX512-BF16, no AMX) the same orders were 0.7x-0.85x, so they are used only where the CPU has
AMX. They gave nothing in float32 once the weights no longer fit in cache.

For float32 at a few rows (batched decoding) the remedy is the weight's memory layout: ``packed_weights(model)``
reorders every ``Linear`` weight into oneDNN's blocked layout for the duration of a ``with`` block (one extra
copy of those weights; GPT-2 124M packs in ~0.2 s), and ``Linear`` then multiplies with oneDNN: 1.9x faster than
``F.linear`` at 8 rows over GPT-2's weights (``bench/kernels.py``). Packed float32 is faster for many rows too
(encoding 32 x 128 tokens with BERT's shapes on AMD EPYC: 13-17% per matrix), and oneDNN applies a ``Linear``'s
activation inside the same kernel (fc1 + GELU: 28 -> 23 ms), so whole-batch inference (``bench/encode.py``)
uses the packed path as well. Results equal ``F.linear`` up to rounding (tested).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from glassformer.nn.activation import ACTIVATIONS, check_activation

MAX_SMALL_ROWS = 16
# oneDNN's post-op for each activation: (attr, scalars, algorithm) of torch.ops.mkldnn._linear_pointwise
ONEDNN_ACTIVATIONS = {
    None: ("none", [], ""),
    "relu": ("relu", [], ""),
    "gelu": ("gelu", [], "none"),
    "gelu_tanh": ("gelu", [], "tanh"),
    "silu": ("swish", [], ""),
}


def _cpu_has_amx() -> bool:
    """Whether the CPU has AMX tiles (Intel Xeon since Sapphire Rapids): there oneDNN's half-precision GEMM is
    slow for a few rows and the reordered products below win; without AMX (e.g. AMD EPYC with AVX512-BF16)
    ``F.linear`` is already the faster kernel (``bench/kernels.py``)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe is not None and probe())


REORDER_HALF_PRECISION = _cpu_has_amx()
# rows for which a packed weight is faster than F.linear: from 2 on the Intel/AMX machine, from 1 on AMD EPYC, where
# over GPT-2's weights one packed row is 1.7x faster than F.linear in float32 and 2x in bfloat16 (bench/kernels.py);
# half precision only up to 64 rows (decoding), the range it was measured in
MIN_PACKED_ROWS = 2 if REORDER_HALF_PRECISION else 1
MAX_PACKED_HALF_ROWS = 64


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x Wᵀ + b`` for ``x`` of shape ``(..., in_features)`` -> ``(..., out_features)``."""
    half = weight.dtype in (torch.bfloat16, torch.float16)
    if (
        not (half and REORDER_HALF_PRECISION)
        or x.device.type != "cpu"
        or torch.is_grad_enabled()
        or x.dtype != weight.dtype
    ):
        return F.linear(x, weight, bias)
    rows = x.numel() // x.size(-1)
    out_shape = (*x.shape[:-1], weight.size(0))
    if rows == 1:
        y = torch.mv(weight, x.reshape(-1)) if bias is None else torch.addmv(bias, weight, x.reshape(-1))
        return y.view(out_shape)
    if rows <= MAX_SMALL_ROWS:
        xt = x.reshape(rows, -1).t()
        y = torch.mm(weight, xt) if bias is None else torch.addmm(bias[:, None], weight, xt)  # (out, rows)
        return y.t().reshape(out_shape)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``torch.nn.Linear`` computed by ``linear`` (same parameters and checkpoint names), or by oneDNN with the
    packed copy of the weight that ``packed_weights`` provides. With ``activation`` (a name of
    ``glassformer.nn.activation.ACTIVATIONS``) the output is act(x Wᵀ + b)."""

    packed_weight: torch.Tensor | None = None

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str | None = None):
        super().__init__(in_features, out_features, bias)
        if activation is not None:
            check_activation(activation)
        self.activation = activation

    def uses_packed_weight(self, x: torch.Tensor) -> bool:
        if self.packed_weight is None or torch.is_grad_enabled() or x.dtype != self.weight.dtype:
            return False
        if torch.is_autocast_enabled(x.device.type):  # autocast computes in its own dtype: leave it to F.linear
            return False
        rows = x.numel() // x.size(-1)
        return rows >= MIN_PACKED_ROWS and (x.dtype == torch.float32 or rows <= MAX_PACKED_HALF_ROWS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uses_packed_weight(x):
            if x.dtype == torch.float32 or self.activation is None:
                return torch.ops.mkldnn._linear_pointwise(
                    x, self.packed_weight, self.bias, *ONEDNN_ACTIVATIONS[self.activation]
                )
            # half precision (decoding, at most 64 rows): the activation apart, as on the unpacked path, so that
            # packing changes no result; fused, it saved nothing measurable at these row counts
            y = torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, *ONEDNN_ACTIVATIONS[None])
            return ACTIVATIONS[self.activation](y)
        y = linear(x, self.weight, self.bias)
        return y if self.activation is None else ACTIVATIONS[self.activation](y)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", activation={self.activation}" if self.activation else "")


def can_pack(module: nn.Module) -> bool:
    """float32 weights always; bfloat16 ones where the CPU has no AMX (with AMX the reordered products of
    ``linear`` serve bfloat16 instead)."""
    packable = (torch.float32,) if REORDER_HALF_PRECISION else (torch.float32, torch.bfloat16)
    return (
        isinstance(module, Linear)
        and module.weight.dtype in packable
        and module.weight.device.type == "cpu"
        and torch.backends.mkldnn.is_available()
    )


@contextmanager
def packed_weights(model: nn.Module) -> Iterator[None]:
    """Within the block, every packable (``can_pack``) ``Linear`` of ``model`` carries a oneDNN-packed copy of its
    weight (inference only: the copy does not follow later changes to the weight, so it is dropped on exit)."""
    layers = [m for m in model.modules() if can_pack(m)]
    try:
        for layer in layers:
            layer.packed_weight = torch.ops.mkldnn._reorder_linear_weight(layer.weight.detach(), 8)
        yield
    finally:
        for layer in layers:
            layer.packed_weight = None
