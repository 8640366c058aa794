"""Weight-only quantization: a weight matrix stored as small integer codes with one float scale (and offset) per
group of G consecutive weights along the input, multiplied with float activations.

    int8   w = q · s          q ∈ [−127, 127]   s = max|w| / 127 over the group          (symmetric)
    int4   w = q · s + o      q ∈ [0, 15]       s = (max w − min w) / 15, o = min w      (asymmetric)

s and o are stored in half precision (float16, as GGUF's blocks store them), and q is rounded against those stored
values, so a group's error stays within half a step: with G = 32, int4 takes 5 bits a weight (4 + 2 · 16 / 32) and
int8 8.5.

Activations stay float (weight-only), unless an int8 weight with one scale per output channel is given
``activations = "int8"``: products of more than ``KERNEL_ROWS`` rows (prompts, beams, batches) then quantize each row
of x to int8 as it comes, ``x ≈ x_q · s_x`` with ``s_x = max|x_row| / 127``, and multiply in integers,

    y = (x_q q^T) · s_x · s_w + b                  (``dynamic_int8_linear_reference``; W8A8, "dynamic")

where compute, not the weights' bytes, is the bound (CPUs with VNNI: one instruction for 64 int8 products); fewer
rows keep the kernel's 16-bit activations, as the weights' bytes bound those. Any quantized weight may be given
``activations = "bf16"``: glassformer's kernel then takes products of 4 to ``BF16_KERNEL_ROWS`` rows (several
sequences decoding together, short prompts) with x rounded to bfloat16 and each pair of weight blocks widened to
bfloat16 once for up to 8 rows, summing in float32,

    y = bf16(x) bf16(W)^T + b                      (``bf16_linear_reference``)

where the CPU multiplies bfloat16 pairs (AVX512-BF16: about 1.5x the 16-bit products' speed from 8 rows on;
``csrc/products.h``); more rows take the tiles in bfloat16 (oneDNN's bfloat16 product, whose output is rounded to
bfloat16 as well: ``bf16(bf16(x) bf16(W)^T) + b``); fewer rows, and other CPUs, keep the 16-bit activations (finer).

G = in_features is one scale per output channel (int8's default); int4 defaults to G = 32. llama.cpp's blocks are
these formats with G = 32: Q8_0 is int8 (q and s exactly), Q4_1 is int4 (s = d, o = m), Q4_0 is int4 with
o = −8 s. int4 codes are stored two to a byte in blocks of 32 along the input, 16 bytes per block, byte j holding
code j in its low nibble and code j + 16 in its high one — Q4_0 / Q4_1's layout, so GGUF files load by copying.

    y = x Wᵀ + b,   W dequantized:   ``quantized_linear_reference`` (the whole weight to float, then F.linear)

Faster paths for the CPU live one floor below, in ``glassformer.backends.cpu.quantized`` (glassformer's own kernel, a
torch operator, and torch's int8 / int4 kernels), each tested against that reference (``tests/nn/test_quantization.py``,
``tests/backends``). ``quantized_linear`` is the one place that asks them: float32 activations on the CPU, up to
``KERNEL_ROWS`` rows (decoding, short prompts; ``BF16_KERNEL_ROWS`` with bfloat16 activations), no gradient. Many
rows on the CPU (longer prompts and batches, any dtype) dequantize a tile of weight rows at a time
(``quantized_linear_tiled``: about 1 MiB, kept in cache for its product; a float copy of the whole matrix is never
made); GPUs and products that need a gradient dequantize and call ``F.linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from glassformer.backends.cpu import onednn
from glassformer.backends.cpu import quantized as cpu_quantized
from glassformer.backends.cpu.quantized import INT4_BLOCK, KINDS, dequantize, dequantize_rows, pack_int4
from glassformer.backends.kernels import kernel_works

DEFAULT_INT4_GROUP = 32
ACTIVATIONS = ("int8", "bf16")  # what a quantized weight's products may take x as besides float (module docstring)
# the most rows of activations the fused kernels take (decoding, and prompts up to this length); more rows dequantize
# a tile at a time and multiply (quantized_linear_tiled), which was as fast at 32-64 rows and faster past them on
# both the AVX512-VNNI and the AVX2 kernels (SmolLM2 int4 prompts, 2-core EPYC): 64
KERNEL_ROWS = 64
# the same with bfloat16 activations (activations="bf16", where the kernel multiplies bfloat16): the kernel widens a
# chunk of weight rows once for all the rows of x and, from 16 rows, multiplies them as outer products
# (csrc/products.h); it is faster than the tiles in bfloat16 up to 512 rows (1.13-1.75x) and about as fast at
# 768-1024 (0.95-1.08x) (python bench/kernels.py, "SmolLM2 shapes ... bf16: tiles vs kernel")
BF16_KERNEL_ROWS = 512
# floats of weight dequantized at a time for many rows of activations (quantized_linear_tiled): 1 MiB in float32
TILE_ELEMENTS = 1 << 18


def tensor_state(tensor: torch.Tensor) -> tuple[int, int]:
    """``(data pointer, version)``: what a copy made for speed (packed, or a kernel's layout) was made from; it is made
    anew when either changes. Tensors made under ``torch.inference_mode`` track no version (0): a change to one in
    place, inside inference mode, goes unseen."""
    return tensor.data_ptr(), 0 if tensor.is_inference() else tensor._version


def check_quantization(kind: str, group_size: int | None, in_features: int, what: str = "the weight") -> int:
    """The group size that ``kind`` and ``group_size`` give for a weight with ``in_features`` inputs (``None``: one
    group per row for int8, 32 for int4); a one-line ``ValueError`` naming both when the shape does not allow it."""
    if kind not in KINDS:
        raise ValueError(f"unknown quantization {kind!r}; choose one of {', '.join(KINDS)}")
    group = group_size or (in_features if kind == "int8" else DEFAULT_INT4_GROUP)
    if group <= 0 or in_features % group != 0:
        raise ValueError(
            f"{kind} with group size {group} does not fit {what} with in_features={in_features}: the group size must "
            f"divide it (e.g. {', '.join(str(g) for g in (32, 64, 128) if in_features % g == 0) or in_features})"
        )
    if kind == "int4" and group % INT4_BLOCK != 0:
        raise ValueError(
            f"int4 with group size {group} does not fit {what} with in_features={in_features}: int4 groups are "
            f"multiples of {INT4_BLOCK} (codes are stored in blocks of {INT4_BLOCK})"
        )
    return group


def check_activations(activations: str | None, kind: str | None, group_size: int | None) -> None:
    """Activations ``"int8"``, ``"bf16"`` (or None) for weights of ``kind`` in groups of ``group_size`` (None: one per
    output row), else a one-line ``ValueError``."""
    if activations not in (None, *ACTIVATIONS):
        raise ValueError(f"unknown activations {activations!r}; choose int8 or bf16 (or leave them float)")
    if activations == "int8" and (kind != "int8" or group_size):
        raise ValueError(
            "int8 activations need int8 weights with one scale per output row: --quantize int8 without --group-size"
        )


def quantize_tensor(
    weight: torch.Tensor, kind: str, group_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(codes, scales, offsets)`` of a float weight ``(N, K)`` by the formulas of the module docstring; scales and
    offsets ``(N, K / G)`` in float16, offsets None for int8; the codes rounded against the stored (half) scale and
    offset. A group of equal weights gets scale 1 (codes 0)."""
    n, k = weight.shape
    group = check_quantization(kind, group_size, k)
    w = weight.detach().float().reshape(n, k // group, group)
    if kind == "int8":
        scales = w.abs().amax(-1) / 127
        scales = torch.where(scales > 0, scales, torch.ones_like(scales)).half()
        codes = (w / scales.float()[..., None]).round().clamp(-127, 127).to(torch.int8)
        return codes.reshape(n, k), scales.contiguous(), None
    low, high = w.amin(-1), w.amax(-1)
    scales = (high - low) / 15
    scales, offsets = torch.where(scales > 0, scales, torch.ones_like(scales)).half(), low.half()
    q = ((w - offsets.float()[..., None]) / scales.float()[..., None]).round().clamp(0, 15)
    return pack_int4(q.reshape(n, k)), scales.contiguous(), offsets.contiguous()


class QuantizedWeight(nn.Module):
    """A ``(out_features, in_features)`` weight as buffers ``codes`` (int8 ``(N, K)``, or uint8 ``(N, K / 2)`` for
    int4), ``scales`` and, for int4, ``offsets`` (float16 ``(N, K / G)``, whatever dtype the model is moved to).
    Held by a quantized ``Linear`` (and by a quantized token embedding, shared with a tied output layer)."""

    def __init__(self, out_features: int, in_features: int, kind: str, group_size: int | None = None, device=None):
        super().__init__()
        self.kind = kind
        self.group_size = check_quantization(kind, group_size, in_features)
        self.out_features, self.in_features = out_features, in_features
        groups = in_features // self.group_size
        width, dtype = (in_features, torch.int8) if kind == "int8" else (in_features // 2, torch.uint8)
        self.register_buffer("codes", torch.zeros(out_features, width, dtype=dtype, device=device))
        self.register_buffer("scales", torch.ones(out_features, groups, dtype=torch.float16, device=device))
        offsets = torch.zeros(out_features, groups, dtype=torch.float16, device=device) if kind == "int4" else None
        self.register_buffer("offsets", offsets)
        self._torch_layout: tuple | None = None  # torch's packed int4 layout, made on first use
        self.dtype = torch.float32  # the model's float dtype (``.to(dtype)`` follows it): what a lookup gives
        # "int8": many rows quantized to int8 as they come; "bf16": 4 or more rows in bfloat16 (module docstring)
        self.activations: str | None = None

    def set_activations(self, activations: str | None) -> None:
        """``"int8"``: products of many rows with int8 activations (an int8 weight with one scale per output row
        only); ``"bf16"``: products of 4 or more rows in bfloat16 (any weight); None: float activations. A one-line
        ``ValueError`` for int8 activations on any other weight."""
        check_activations(activations, self.kind, None if self.group_size == self.in_features else self.group_size)
        self.activations = activations

    @classmethod
    def from_float(cls, weight: torch.Tensor, kind: str, group_size: int | None = None) -> QuantizedWeight:
        out = cls(*weight.shape, kind, group_size, device="meta")
        codes, scales, offsets = quantize_tensor(weight, kind, out.group_size)
        out.codes, out.scales, out.offsets = codes, scales, offsets
        return out

    def _apply(self, fn, recurse=True):  # .to(dtype) moves the buffers but keeps scales and offsets in float16
        super()._apply(fn, recurse)
        self.dtype = fn(torch.empty(0, dtype=self.dtype)).dtype  # where .to(dtype) would take a float tensor
        for name in ("scales", "offsets"):
            tensor = getattr(self, name)
            if tensor is not None and tensor.dtype != torch.float16 and tensor.device.type != "meta":
                setattr(self, name, tensor.half())
        self._torch_layout = None
        return self

    @property
    def shape(self) -> tuple[int, int]:
        return self.out_features, self.in_features

    def torch_int4_layout(self) -> tuple | None:
        """torch's packed int4 layout of this weight (``backends.cpu.quantized.torch_int4_layout``), made on first use
        and kept until the codes, scales or offsets change; None for int8."""
        if self.kind == "int8":
            return None
        key = (tensor_state(self.codes), tensor_state(self.scales), tensor_state(self.offsets))
        if self._torch_layout is None or self._torch_layout[0] != key:
            self._torch_layout = (key, cpu_quantized.torch_int4_layout(self.codes, self.scales, self.offsets))
        return self._torch_layout[1]

    @property
    def nbytes(self) -> int:
        """Bytes read to use the whole weight once."""
        return sum(t.numel() * t.element_size() for t in (self.codes, self.scales, self.offsets) if t is not None)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight in float, ``(out_features, in_features)``."""
        return dequantize(self.codes, self.scales, self.offsets, dtype)

    def lookup(self, ids: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Rows ``ids`` of the weight in float (an embedding lookup): ``(*ids.shape, in_features)``, in ``dtype``
        (default: the model's, ``self.dtype``)."""
        offsets = None if self.offsets is None else self.offsets[ids]
        return dequantize(self.codes[ids], self.scales[ids], offsets, dtype or self.dtype)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None, rows: slice | None = None) -> torch.Tensor:
        """``x Wᵀ + b`` for ``x`` ``(..., in_features)``; ``rows`` multiplies with those output rows only."""
        return quantized_linear(x, self, bias, rows)

    def extra_repr(self) -> str:
        return f"{self.kind}, group_size={self.group_size}, out={self.out_features}, in={self.in_features}"


def bf16_linear_reference(x: torch.Tensor, weight: QuantizedWeight, bias=None) -> torch.Tensor:
    """The formula of bfloat16 activations: ``x`` and the dequantized weight rounded to bfloat16, multiplied and
    summed in float32, in ``x``'s dtype."""
    offsets = weight.offsets
    w = dequantize(weight.codes, weight.scales, offsets).bfloat16().float()
    y = F.linear(x.bfloat16().float(), w, None if bias is None else bias.float())
    return y.to(x.dtype)


def quantized_linear_reference(x: torch.Tensor, weight: QuantizedWeight, bias=None, rows: slice | None = None):
    """The formula: dequantize the weight (its ``rows``), then ``F.linear`` — what every fast path must equal."""
    rows = rows or slice(None)
    offsets = None if weight.offsets is None else weight.offsets[rows]
    w = dequantize(weight.codes[rows], weight.scales[rows], offsets, x.dtype)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))


def dynamic_int8_linear_reference(x: torch.Tensor, weight: QuantizedWeight, bias=None, rows: slice | None = None):
    """The formula of int8 activations: each row of x quantized (``quantize_rows_int8``) and dequantized, then the
    reference product."""
    x2 = x.reshape(-1, x.size(-1))
    xq, scales = cpu_quantized.quantize_rows_int8(x2)
    y = quantized_linear_reference((xq.float() * scales).to(x.dtype), weight, bias, rows)
    return y.reshape(*x.shape[:-1], y.size(-1))


def quantized_linear_tiled(x: torch.Tensor, weight: QuantizedWeight, bias=None, rows: slice | None = None):
    """The reference's product a tile of weight rows at a time (``TILE_ELEMENTS`` weights, at least 16 rows): each
    tile dequantized, multiplied while it is in cache, and dropped — never a float copy of the whole matrix. Equal to
    the reference up to the float rounding of the products."""
    codes, scales, offsets = weight.codes, weight.scales, weight.offsets
    if rows is not None:
        codes, scales, offsets = codes[rows], scales[rows], None if offsets is None else offsets[rows]
    n, step, group = codes.size(0), max(16, TILE_ELEMENTS // weight.in_features), weight.group_size
    x2 = x.reshape(-1, x.size(-1)).contiguous()
    y = x2.new_empty(x2.size(0), n)
    onednn_product = onednn.packs(x.dtype)  # oneDNN takes a plain weight too, faster than torch's default here
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        tile = dequantize_rows(codes[r0:r1], scales[r0:r1], None if offsets is None else offsets[r0:r1], group, x.dtype)
        y[:, r0:r1] = onednn.packed_linear(x2, tile, None) if onednn_product else x2 @ tile.t()
    if bias is not None:
        y += bias.to(x.dtype)
    return y.reshape(*x.shape[:-1], n)


def quantized_linear(x: torch.Tensor, weight: QuantizedWeight, bias=None, rows: slice | None = None) -> torch.Tensor:
    """``x Wᵀ + b`` by the path ``glassformer.backends.cpu.quantized`` serves these inputs with, else the reference:
    the one dispatch point of quantized products."""
    count = x.numel() // max(x.size(-1), 1)
    if weight.activations == "int8" and count > KERNEL_ROWS and not (torch.is_grad_enabled() and x.requires_grad):
        if x.device.type == "cpu" and kernel_works("quantized_dynamic_int8"):
            codes, scales = (weight.codes, weight.scales) if rows is None else (weight.codes[rows], weight.scales[rows])
            return cpu_quantized.dynamic_int8_linear(x, codes, scales, bias)
        return dynamic_int8_linear_reference(x, weight, bias, rows)
    bf16 = weight.activations == "bf16" and x.device.type == "cpu" and kernel_works("quantized_native_bf16")
    if (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.bfloat16, torch.float16)
        and 0 < count <= (BF16_KERNEL_ROWS if bf16 else KERNEL_ROWS)
        and not (torch.is_grad_enabled() and x.requires_grad)
    ):  # the kernels take float32: 16-bit activations go in widened and come out in their dtype
        kernel = cpu_quantized.cpu_kernel(weight.kind)
        codes, scales, offsets, group = weight.codes, weight.scales, weight.offsets, weight.group_size
        x32, bias32 = x.float(), None if bias is None else bias.float()
        if kernel == "native" and cpu_quantized.native_fits(weight.in_features, group, codes):
            if rows is not None:  # one of Q, K, V: a view of those rows
                codes, scales, offsets = codes[rows], scales[rows], None if offsets is None else offsets[rows]
            return cpu_quantized.native_linear(x32, codes, scales, offsets, group, bias32, bf16).to(x.dtype)
        if kernel == "torch" and rows is None and cpu_quantized.torch_fits(weight.kind, *weight.shape, group):
            y = cpu_quantized.torch_linear(x32, codes, scales, group, bias32, weight.torch_int4_layout())
            return y.to(x.dtype)
    if x.device.type == "cpu" and count > 0 and not (torch.is_grad_enabled() and x.requires_grad):
        # bfloat16 activations past the kernel's rows: the tiles in bfloat16 (oneDNN's product, its output rounded too)
        if bf16 and count > BF16_KERNEL_ROWS and x.dtype == torch.float32:
            y = quantized_linear_tiled(x.bfloat16(), weight, None, rows).float()
            return y if bias is None else y + bias.float()
        return quantized_linear_tiled(x, weight, bias, rows)
    return quantized_linear_reference(x, weight, bias, rows)
