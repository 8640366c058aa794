"""Float weights on the CPU, faster: oneDNN's packed layout, and AMX's half-precision products in another order.
``glassformer.nn.linear.Linear`` calls these at its one dispatch point, each tested against ``F.linear``:

- **Packed weights** (``pack``, ``packed_linear``): a weight reordered once into oneDNN's blocked layout, then
  multiplied by oneDNN with the activation inside the same kernel. float32 everywhere oneDNN is; bfloat16 where the
  CPU packs it (AVX512 or AVX-NE-CONVERT: ``packs``), not where AMX serves bfloat16 through the reordered products.
- **Reordered half-precision products** (``reordered_linear``; CPUs with AMX tiles, whose oneDNN kernels cost more to
  start than one token per sequence needs): with bfloat16/float16 weights, no gradient and a few rows —

      1 row:        W x        (torch.mv, a matrix-vector product)
      2-16 rows:    (W xᵀ)ᵀ    (a GEMM that reads the weight in its stored order)

Each is probed once (``glassformer.backends.kernels``); ``bench/kernels.py`` measures both against ``F.linear``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from glassformer import cpu
from glassformer.backends.kernels import kernel_works
from glassformer.tolerance import tolerance

MAX_SMALL_ROWS = 16  # the reordered products serve up to 16 rows
MAX_PACKED_HALF_ROWS = 64  # half precision is packed up to 64 rows (decoding)
# oneDNN's post-op for each activation: (attr, scalars, algorithm) of torch.ops.mkldnn._linear_pointwise
ONEDNN_ACTIVATIONS = {
    None: ("none", [], ""),
    "relu": ("relu", [], ""),
    "gelu": ("gelu", [], "none"),
    "gelu_tanh": ("gelu", [], "tanh"),
    "silu": ("swish", [], ""),
}


@functools.cache
def reorder_half_precision() -> bool:
    """Whether half-precision products are reordered: where the CPU has AMX (``cpu.has_amx``) and the kernel is not
    switched off (``GLASSFORMER_KERNELS``). Asked on first use (so ``GLASSFORMER_CPU`` applies), then remembered:
    ``Linear`` asks at every call."""
    return kernel_works("reordered_half_precision")


def reordered_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """``x Wᵀ + b`` as ``W x`` (1 row) or ``(W xᵀ)ᵀ`` (2-16 rows); None for more rows."""
    rows = x.numel() // x.size(-1)
    out_shape = (*x.shape[:-1], weight.size(0))
    if rows == 1:
        y = torch.mv(weight, x.reshape(-1)) if bias is None else torch.addmv(bias, weight, x.reshape(-1))
        return y.view(out_shape)
    if rows <= MAX_SMALL_ROWS:
        xt = x.reshape(rows, -1).t()
        y = torch.mm(weight, xt) if bias is None else torch.addmm(bias[:, None], weight, xt)  # (out, rows)
        return y.t().reshape(out_shape)
    return None


def min_packed_rows() -> int:
    """The fewest rows for which packed weights are used: with AMX one row goes through the reordered products (or
    plain float32), elsewhere packing pays from one row."""
    return 2 if reorder_half_precision() else 1


def packed_kernel(dtype: torch.dtype) -> str | None:
    return {torch.float32: "onednn_packed_fp32", torch.bfloat16: "onednn_packed_bf16"}.get(dtype)


def packs(dtype: torch.dtype) -> bool:
    """Whether weights of ``dtype`` are packed here. oneDNN packs bfloat16 only with AVX512 (BW/VL/DQ) or
    AVX-NE-CONVERT: asked of the (narrowed) features too, so that ``GLASSFORMER_CPU`` takes it away whatever oneDNN
    itself would answer; with AMX the reordered products serve bfloat16 instead."""
    if dtype == torch.bfloat16 and (
        not (cpu.features()["avx512"] or cpu.features()["bf16_convert"]) or reorder_half_precision()
    ):
        return False
    name = packed_kernel(dtype)
    return name is not None and kernel_works(name)


def pack(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` ``(out, in)`` in oneDNN's blocked layout (an opaque tensor, for ``packed_linear``)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 8)


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, activation: str | None = None):
    """``act(x Wᵀ + b)`` by oneDNN with the packed weight, the activation (a key of ``ONEDNN_ACTIVATIONS``) fused.
    A plain ``(out, in)`` weight is taken too (oneDNN reorders it on the way): a weight used once, such as a tile of
    a quantized weight dequantized for a long prompt, where oneDNN's product is ~2x torch's default (measured with
    512 rows on AVX512; ``bench/quantized.py`` shows the prompt speed)."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, *ONEDNN_ACTIVATIONS[activation])


def _probe_packed(dtype: torch.dtype) -> None:
    """Pack a small weight and multiply, fused ReLU included; the result must equal ``F.linear``."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(24, 16, generator=generator).to(dtype)
    bias = torch.randn(24, generator=generator).to(dtype)
    x = torch.randn(3, 16, generator=generator).to(dtype)
    y = packed_linear(x, torch.ops.mkldnn._reorder_linear_weight(weight, 3), bias, "relu")
    expected = F.linear(x.float(), weight.float(), bias.float()).relu()
    atol = 1e-4 if dtype == torch.float32 else 0.1
    if not torch.allclose(y.float(), expected, atol=atol, rtol=0.02):
        raise RuntimeError("packed product differs from F.linear")


def probe_packed_fp32() -> None:
    _probe_packed(torch.float32)


def probe_packed_bf16() -> None:
    _probe_packed(torch.bfloat16)


def probe_reordered_products() -> None:
    """Only where AMX's tile kernels are what the reordering avoids; the reordered products must equal F.linear."""
    if not cpu.has_amx():
        raise RuntimeError("no AMX")
    generator = torch.Generator().manual_seed(0)
    weight, x = (torch.randn(*shape, generator=generator).bfloat16() for shape in ((24, 16), (3, 16)))
    with torch.no_grad():
        expected = F.linear(x.float(), weight.float())
        for rows in (x[:1], x):
            y = reordered_linear(rows, weight, None).float()
            if not torch.allclose(y, expected[: len(rows)], **tolerance("bf16")):
                raise RuntimeError("the reordered product differs from F.linear")
