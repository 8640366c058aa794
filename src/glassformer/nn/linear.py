"""The affine map y = x Wᵀ + b, with a fast path for half-precision decoding on the CPU.

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
copy of those weights; GPT-2 124M packs in ~0.2 s), and ``Linear`` then multiplies 2-64 rows with oneDNN:
1.9x faster than ``F.linear`` at 8 rows over GPT-2's weights (``bench/kernels.py``). Results equal ``F.linear``
up to rounding (tested).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

MAX_SMALL_ROWS = 16


def _cpu_has_amx() -> bool:
    """Whether the CPU has AMX tiles (Intel Xeon since Sapphire Rapids): there oneDNN's half-precision GEMM is
    slow for a few rows and the reordered products below win; without AMX (e.g. AMD EPYC with AVX512-BF16)
    ``F.linear`` is already the faster kernel (``bench/kernels.py``)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe is not None and probe())


REORDER_HALF_PRECISION = _cpu_has_amx()
# rows for which a packed weight is faster than F.linear: 2-64 on the Intel/AMX machine; 1-64 on AMD EPYC, where
# over GPT-2's weights one packed row is 1.7x faster than F.linear in float32 and 2x in bfloat16 (bench/kernels.py)
PACKED_ROWS = range(2 if REORDER_HALF_PRECISION else 1, 65)


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
    packed copy of the weight that ``packed_weights`` provides."""

    packed_weight: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            self.packed_weight is not None
            and not torch.is_grad_enabled()
            and x.dtype == self.weight.dtype
            and x.numel() // x.size(-1) in PACKED_ROWS
        ):
            return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")
        return linear(x, self.weight, self.bias)


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
