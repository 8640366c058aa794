"""Quantized products on the CPU: ``y = x Wᵀ + b`` with W held as integer codes and per-group scales (and offsets)
— the formats of ``glassformer.nn.quantization``, whose ``quantized_linear`` dispatches here and whose reference
(dequantize, then ``F.linear``) every path below must equal.

The codes' layout is the kernels' (and GGUF's): int8 codes ``(N, K)`` one byte each; int4 codes 0..15 two to a byte
in blocks of 32 along the input, 16 bytes per block, byte j holding code j in its low nibble and code j + 16 in its
high one (llama.cpp's Q4_0 / Q4_1 blocks): ``pack_int4`` / ``unpack_int4``.

- **glassformer's kernel**, the op ``glassformer::quantized_linear`` (``csrc/quantized.h``, built for this CPU by
  ``extension``): float32 activations, in_features and G multiples of 32. The weights are read once, 1 or ½ byte
  each, never dequantized to memory; the activations are written as 16-bit fixed point per block of 32 so that the
  codes multiply them in integer arithmetic (``csrc/fixed_point.h`` has the formula) — or, ``bf16``, products of 4
  or more rows take them in bfloat16 and the weights widened to bfloat16 a pair of blocks at a time, where the CPU
  multiplies bfloat16 pairs (AVX512-BF16: ``csrc/products.h``; the kernel ``quantized_native_bf16``).
- **torch's CPU kernels** where this torch has them: ``aten._weight_int8pack_mm`` (int8, one scale per output
  channel) and ``aten._weight_int4pack_mm_for_cpu`` (int4, G of 32 … 256) through its packed layout
  (``torch_int4_layout``, made once per weight by the caller).

Which of the two serves a kind is fixed per process (``cpu_kernel``): glassformer's where its probe passes, else
torch's; never chosen by timing, so a machine's numbers do not depend on which was faster in one process.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from glassformer.backends.cpu import extension
from glassformer.backends.kernels import kernel_works

KINDS = ("int8", "int4")
INT4_BLOCK = 32  # int4 codes are stored in blocks of 32 (16 bytes)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Codes 0..15 ``(N, K)`` -> bytes ``(N, K / 2)``: per block of 32, byte j = q[j] | q[j + 16] << 4."""
    blocks = q.to(torch.uint8).reshape(q.size(0), -1, INT4_BLOCK)
    return (blocks[..., :16] | (blocks[..., 16:] << 4)).reshape(q.size(0), -1)


def unpack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Bytes ``(N, K / 2)`` -> codes 0..15 ``(N, K)`` (the inverse of ``pack_int4``)."""
    blocks = codes.reshape(codes.size(0), -1, INT4_BLOCK // 2)
    return torch.cat((blocks & 15, blocks >> 4), dim=-1).reshape(codes.size(0), -1)


def dequantize(codes, scales, offsets=None, dtype=torch.float32) -> torch.Tensor:
    """The float weight ``(..., N, K)`` that codes, scales ``(..., N, K / G)`` and offsets stand for: int8 (offsets
    None) w = q · s, int4 w = q · s + o (``glassformer.nn.quantization`` states the formats), in float32 from the
    half-precision scales and offsets."""
    q = codes.float() if offsets is None else unpack_int4(codes.reshape(-1, codes.size(-1))).float()
    q = q.reshape(*scales.shape, -1)  # (..., groups, G)
    scales = scales.float()
    w = q * scales[..., None] if offsets is None else torch.addcmul(offsets.float()[..., None], q, scales[..., None])
    return w.reshape(*scales.shape[:-1], -1).to(dtype)


def dequantize_rows(codes, scales, offsets, group_size: int, dtype=torch.float32) -> torch.Tensor:
    """``dequantize`` for a weight (or a tile of its rows) ``(N, K)``: by ``glassformer::dequantize`` (one pass,
    every thread) where its probe passed and the layout fits, else in torch operations."""
    in_features = scales.size(-1) * group_size
    fits = codes.dim() == 2 and scales.dtype == torch.float16 and native_fits(in_features, group_size, codes)
    if fits and kernel_works("quantized_native_dequantize"):
        w = torch.ops.glassformer.dequantize(codes, scales.contiguous(), _contiguous(offsets), group_size)
        return w.to(dtype)
    return dequantize(codes, scales, offsets, dtype)


def _contiguous(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.contiguous()


def native_fits(in_features: int, group_size: int, codes: torch.Tensor) -> bool:
    return in_features % INT4_BLOCK == 0 and group_size % INT4_BLOCK == 0 and codes.is_contiguous()


def native_linear(x, codes, scales, offsets, group_size: int, bias=None, bf16: bool = False) -> torch.Tensor:
    """``x Wᵀ + b`` by ``glassformer::quantized_linear``: float32 ``x`` ``(..., K)`` on the CPU; ``bf16``: products
    of 4 or more rows take ``x`` in bfloat16 (where this build multiplies it: ``glassformer::bf16_dot``)."""
    if not extension.load():
        raise RuntimeError(extension.why_not[-1])
    bias = None if bias is None else bias.float().contiguous()
    return torch.ops.glassformer.quantized_linear(x, codes, scales, offsets, bias, group_size, bf16)


def torch_fits(kind: str, out_features: int, in_features: int, group_size: int) -> bool:
    if kind == "int8":
        return group_size == in_features
    return group_size in (32, 64, 128, 256) and out_features % 16 == 0  # its packing needs N % 16


def torch_int4_layout(codes: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor) -> tuple:
    """torch's packed int4 weight and its scales-and-zeros ``(K / G, N, 2)``: torch's int4 is w = (q − 8) · s + zero,
    so zero = o + 8 s."""
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(unpack_int4(codes).to(torch.int32), 1)
    scales, offsets = scales.float(), offsets.float()
    return packed, torch.stack((scales, offsets + 8 * scales), dim=-1).transpose(0, 1).contiguous()


def torch_linear(x, codes, scales, group_size: int, bias=None, int4_layout: tuple | None = None) -> torch.Tensor:
    """torch's CPU kernels: int8 with one scale per output channel, or int4 through ``int4_layout``."""
    x2 = x.reshape(-1, x.size(-1)).contiguous()
    if int4_layout is None:
        y = torch.ops.aten._weight_int8pack_mm(x2, codes, scales[:, 0].to(x2.dtype).contiguous())
    else:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, int4_layout[0], group_size, int4_layout[1])
    y = y if bias is None else y + bias
    return y.reshape(*x.shape[:-1], y.size(-1))


def quantize_rows_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row of ``x`` ``(M, K)`` as int8 codes with one float32 scale: ``x ≈ x_q · s``, ``s = max|x_row| / 127``
    (a row of zeros gets codes 0), ``x_q = round(x / s)``. Returns ``(x_q (M, K), s (M, 1))``."""
    scales = x.abs().amax(-1, keepdim=True).float().clamp_min(torch.finfo(torch.float32).tiny) / 127
    return (x / scales).round_().to(torch.int8), scales


def dynamic_int8_linear(x, codes, scales, bias=None) -> torch.Tensor:
    """``x Wᵀ + b`` with ``x``'s rows quantized to int8 as it comes (``quantize_rows_int8``) and int8 codes with one
    scale per output row: ``y = (x_q codesᵀ) · s_x · s_w + b``, the integer product exact in int32 (torch's
    ``_int_mm``: oneDNN's int8 kernel, VNNI where the CPU has it)."""
    x2 = x.reshape(-1, x.size(-1))
    xq, row_scales = quantize_rows_int8(x2)
    y = torch._int_mm(xq, codes.t()).float().mul_(row_scales).mul_(scales.view(1, -1).float())
    if bias is not None:
        y += bias
    return y.to(x.dtype).reshape(*x.shape[:-1], codes.size(0))


# --- which path serves a kind ----------------------------------------------------------------------------------


@functools.cache
@torch.compiler.assume_constant_result  # torch.compile takes the answer as it is, and traces the path it names
def cpu_kernel(kind: str) -> str | None:
    """``"native"``, ``"torch"`` or None: the path that serves ``kind`` in this process — glassformer's own kernel
    where its probe passes, else torch's, else None (the reference). A fixed order, never a timing."""
    return next((path for path in ("native", "torch") if kernel_works(f"quantized_{path}_{kind}")), None)


def describe() -> str:
    """For ``glassformer env``: which path serves each kind here."""
    native = f"glassformer's ({torch.ops.glassformer.simd()})" if extension.load() else "glassformer's"
    names = {"native": native, "torch": "torch's", None: "reference (dequantize + F.linear)"}
    return ", ".join(f"{kind} {names[cpu_kernel(kind)]}" for kind in KINDS)


# --- the probes (backends.kernels) -----------------------------------------------------------------------------


def probe_weight(kind: str, n: int, k: int, group: int, seed: int = 0) -> tuple:
    """Random codes, scales and offsets (float16) of a ``(n, k)`` weight, and that weight in float32."""
    generator = torch.Generator().manual_seed(seed)
    scales = torch.rand(n, k // group, generator=generator) / 50 + 1e-3
    if kind == "int8":
        codes, offsets = torch.randint(-127, 128, (n, k), generator=generator, dtype=torch.int8), None
    else:
        codes = pack_int4(torch.randint(0, 16, (n, k), generator=generator))
        offsets = (-8 * scales + torch.randn(n, k // group, generator=generator) / 100).half()
    scales = scales.half()
    return codes, scales, offsets, dequantize(codes, scales, offsets)


def _probe(kind: str, path: str) -> None:
    """A path must reproduce ``F.linear`` with the float weight on a small product (3 rows, 48 outputs, 64 inputs,
    a bias); glassformer's kernel is also checked by ``torch.library.opcheck`` in the tests."""
    group = 32 if kind == "int4" else 64
    codes, scales, offsets, w = probe_weight(kind, 48, 64, group)
    x, bias = torch.randn(3, 64, generator=torch.Generator().manual_seed(1)), torch.linspace(-1, 1, 48)
    if path == "native":
        y = native_linear(x, codes, scales, offsets, group, bias)
    else:
        if not torch_fits(kind, 48, 64, group):
            raise RuntimeError("torch's kernel does not take this shape")
        layout = None if offsets is None else torch_int4_layout(codes, scales, offsets)
        y = torch_linear(x, codes, scales, group, bias, layout)
    expected = F.linear(x, w, bias)
    if not (y - expected).norm() <= 1e-4 * expected.norm():  # glassformer's kernel: 16-bit activations, ~2e-5
        raise RuntimeError(f"the {path} {kind} product differs from the reference")


def probe_native_dequantize() -> None:
    """glassformer's dequantization must give ``dequantize``'s weight (int8 and int4, two group sizes), to float32's
    rounding (q · s + o with or without a fused multiply-add)."""
    if not extension.load():
        raise RuntimeError(extension.why_not[-1])
    for kind, group in (("int8", 64), ("int4", 32), ("int4", 64)):
        codes, scales, offsets, w = probe_weight(kind, 24, 128, group)
        if (
            not (torch.ops.glassformer.dequantize(codes, scales, offsets, group) - w).abs().max()
            <= 1e-6 * w.abs().max()
        ):
            raise RuntimeError(f"glassformer's {kind} dequantization differs from the formula's")


def probe_dynamic_int8() -> None:
    """torch's integer product must be exact (against int64 products) and take a transposed matrix of codes; the
    dynamic product must then give its formula."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randint(-127, 128, (70, 96), generator=generator, dtype=torch.int8)
    codes = torch.randint(-127, 128, (40, 96), generator=generator, dtype=torch.int8)
    if not torch.equal(torch._int_mm(a, codes.t()), (a.long() @ codes.long().t()).int()):
        raise RuntimeError("torch._int_mm differs from the exact integer product")
    x, scales = torch.randn(70, 96, generator=generator), torch.rand(40, 1, generator=generator).half() / 50 + 1e-3
    xq, row_scales = quantize_rows_int8(x)
    expected = F.linear(xq.float() * row_scales, dequantize(codes, scales))
    if not (dynamic_int8_linear(x, codes, scales) - expected).norm() <= 1e-5 * expected.norm():
        raise RuntimeError("the dynamic int8 product differs from its formula")


def probe_native_bf16() -> None:
    """The bf16 products must multiply bfloat16 here and give, for int8 and int4 weights (3 blocks: one pair and an
    odd one), ``F.linear`` of x in bfloat16 with the weight widened to bfloat16 (each within bfloat16's rounding) —
    for 5 rows and for 20 (from 16 rows: the outer products of ``csrc/products.h``)."""
    if not extension.load() or not torch.ops.glassformer.bf16_dot():
        raise RuntimeError("this build does not multiply bfloat16 (no AVX512-BF16)")
    generator = torch.Generator().manual_seed(2)
    for kind, group, rows in (("int8", 32, 5), ("int4", 32, 5), ("int8", 32, 20), ("int4", 32, 20)):
        codes, scales, offsets, w = probe_weight(kind, 40, 96, group)
        x, bias = torch.randn(rows, 96, generator=generator), torch.linspace(-1, 1, 40)
        expected = F.linear(x.bfloat16().float(), w.bfloat16().float(), bias)
        y = native_linear(x, codes, scales, offsets, group, bias, bf16=True)
        if not (y - expected).norm() <= 1e-5 * expected.norm():  # the same products, summed in another order
            raise RuntimeError(f"the bf16 {kind} product differs from the reference")


def probe_native_int8() -> None:
    _probe("int8", "native")


def probe_native_int4() -> None:
    _probe("int4", "native")


def probe_torch_int8() -> None:
    _probe("int8", "torch")


def probe_torch_int4() -> None:
    _probe("int4", "torch")
