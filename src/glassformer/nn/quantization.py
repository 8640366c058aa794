"""Weight-only quantization: a weight matrix stored as small integer codes with one float scale (and offset) per
group of G consecutive weights along the input, multiplied with float activations.

    int8   w = q · s          q ∈ [−127, 127]   s = max|w| / 127 over the group          (symmetric)
    int4   w = q · s + o      q ∈ [0, 15]       s = (max w − min w) / 15, o = min w      (asymmetric)

G = in_features is one scale per output channel (int8's default); int4 defaults to G = 32. llama.cpp's blocks are
these formats with G = 32: Q8_0 is int8 (q and s exactly), Q4_1 is int4 (s = d, o = m), Q4_0 is int4 with
o = −8 s. int4 codes are stored two to a byte in blocks of 32 along the input, 16 bytes per block, byte j holding
code j in its low nibble and code j + 16 in its high one — Q4_0 / Q4_1's layout, so GGUF files load by copying.

    y = x Wᵀ + b,   W dequantized:   ``quantized_linear_reference`` (the whole weight to float, then F.linear)

Fast paths, each tested against that reference (``tests/nn/test_quantization.py``):

- **glassformer's kernel** (``kernels/quantized.c`` and ``quantized.h``, compiled on first use for this CPU: AVX2 +
  FMA where the compiler targets them, plain C elsewhere): up to ``KERNEL_ROWS`` rows of float32 activations
  (decoding, short prompts). The weights are read once, in 1 or ½ byte each, and never dequantized to memory; the
  activations are written as 16-bit fixed point per block of 32 (error below 2^-15 of the block's largest value)
  so that the integer codes multiply them in integer arithmetic (``quantized.h`` has the formula).
  ``glassformer.nn.fused_decoder`` runs a whole decoding step of a Llama-style model with it.
- **torch's CPU kernels** where this torch has them: ``aten._weight_int8pack_mm`` (int8, one scale per output
  channel) and ``aten._weight_int4pack_mm_for_cpu`` (int4, G of 32 … 256), whose packed layout is made once per
  weight and kept until the codes change.

Which of the two serves decoding is decided once per process (``cpu_kernel``): each must first reproduce the
reference on a small product; glassformer's is used where it does, else torch's (a fixed order). Many rows
(longer prompts and batches), other dtypes and GPUs dequantize and call ``F.linear`` (one matrix
product, where the fused kernels would redo each weight's dequantization per row).
"""

from __future__ import annotations

import ctypes
import functools

import torch
import torch.nn.functional as F
from torch import nn

from glassformer import runtime
from glassformer.nn import kernels

KINDS = ("int8", "int4")
INT4_BLOCK = 32  # int4 codes are stored in blocks of 32 (16 bytes)
DEFAULT_INT4_GROUP = 32
# the most rows of activations the fused kernels take (decoding, and prompts up to this length, where they are still
# faster than dequantizing every matrix to float: bench/quantized.py); more rows dequantize once and multiply
KERNEL_ROWS = 128


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


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Codes 0..15 ``(N, K)`` -> bytes ``(N, K / 2)``: per block of 32, byte j = q[j] | q[j + 16] << 4."""
    blocks = q.to(torch.uint8).reshape(q.size(0), -1, INT4_BLOCK)
    return (blocks[..., :16] | (blocks[..., 16:] << 4)).reshape(q.size(0), -1)


def unpack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Bytes ``(N, K / 2)`` -> codes 0..15 ``(N, K)`` (the inverse of ``pack_int4``)."""
    blocks = codes.reshape(codes.size(0), -1, INT4_BLOCK // 2)
    return torch.cat((blocks & 15, blocks >> 4), dim=-1).reshape(codes.size(0), -1)


def quantize_tensor(
    weight: torch.Tensor, kind: str, group_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(codes, scales, offsets)`` of a float weight ``(N, K)`` by the formulas of the module docstring; scales and
    offsets ``(N, K / G)`` in float32, offsets None for int8. A group of equal weights gets scale 1 (codes 0)."""
    n, k = weight.shape
    group = check_quantization(kind, group_size, k)
    w = weight.detach().float().reshape(n, k // group, group)
    if kind == "int8":
        scales = w.abs().amax(-1) / 127
        scales = torch.where(scales > 0, scales, torch.ones_like(scales))
        codes = (w / scales[..., None]).round().clamp(-127, 127).to(torch.int8)
        return codes.reshape(n, k), scales.contiguous(), None
    low, high = w.amin(-1), w.amax(-1)
    scales = (high - low) / 15
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    q = ((w - low[..., None]) / scales[..., None]).round().clamp(0, 15)
    return pack_int4(q.reshape(n, k)), scales.contiguous(), low.contiguous()


def dequantize_tensor(
    kind: str, codes: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor | None, dtype=torch.float32
) -> torch.Tensor:
    """The float weight ``(N, K)`` that codes, scales and offsets stand for (rows of any leading shape)."""
    q = codes.float() if kind == "int8" else unpack_int4(codes.reshape(-1, codes.size(-1))).float()
    q = q.reshape(*scales.shape, -1)  # (..., groups, G)
    w = q * scales[..., None] if offsets is None else torch.addcmul(offsets[..., None], q, scales[..., None])
    return w.reshape(*scales.shape[:-1], -1).to(dtype)


class QuantizedWeight(nn.Module):
    """A ``(out_features, in_features)`` weight as buffers ``codes`` (int8 ``(N, K)``, or uint8 ``(N, K / 2)`` for
    int4), ``scales`` and, for int4, ``offsets`` (float32 ``(N, K / G)``, whatever dtype the model is moved to).
    Held by a quantized ``Linear`` (and by a quantized token embedding, shared with a tied output layer)."""

    def __init__(self, out_features: int, in_features: int, kind: str, group_size: int | None = None, device=None):
        super().__init__()
        self.kind = kind
        self.group_size = check_quantization(kind, group_size, in_features)
        self.out_features, self.in_features = out_features, in_features
        groups = in_features // self.group_size
        width, dtype = (in_features, torch.int8) if kind == "int8" else (in_features // 2, torch.uint8)
        self.register_buffer("codes", torch.zeros(out_features, width, dtype=dtype, device=device))
        self.register_buffer("scales", torch.ones(out_features, groups, device=device))
        offsets = torch.zeros(out_features, groups, device=device) if kind == "int4" else None
        self.register_buffer("offsets", offsets)
        self._torch_layout: tuple | None = None  # torch's packed int4 layout, made on first use

    @classmethod
    def from_float(cls, weight: torch.Tensor, kind: str, group_size: int | None = None) -> QuantizedWeight:
        out = cls(*weight.shape, kind, group_size, device="meta")
        codes, scales, offsets = quantize_tensor(weight, kind, out.group_size)
        out.codes, out.scales, out.offsets = codes, scales, offsets
        return out

    def _apply(self, fn, recurse=True):  # .to(dtype) moves the buffers but keeps scales and offsets in float32
        super()._apply(fn, recurse)
        for name in ("scales", "offsets"):
            tensor = getattr(self, name)
            if tensor is not None and tensor.dtype != torch.float32 and tensor.device.type != "meta":
                setattr(self, name, tensor.float())
        self._torch_layout = None
        return self

    @property
    def nbytes(self) -> int:
        """Bytes read to use the whole weight once."""
        return sum(t.numel() * t.element_size() for t in (self.codes, self.scales, self.offsets) if t is not None)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight in float, ``(out_features, in_features)``."""
        return dequantize_tensor(self.kind, self.codes, self.scales, self.offsets, dtype)

    def lookup(self, ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Rows ``ids`` of the weight in float (an embedding lookup): ``(*ids.shape, in_features)``."""
        offsets = None if self.offsets is None else self.offsets[ids]
        return dequantize_tensor(self.kind, self.codes[ids], self.scales[ids], offsets, dtype)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None, rows: slice | None = None) -> torch.Tensor:
        """``x Wᵀ + b`` for ``x`` ``(..., in_features)``; ``rows`` multiplies with those output rows only."""
        return quantized_linear(x, self, bias, rows)

    def extra_repr(self) -> str:
        return f"{self.kind}, group_size={self.group_size}, out={self.out_features}, in={self.in_features}"


def quantized_linear_reference(x: torch.Tensor, weight: QuantizedWeight, bias=None, rows: slice | None = None):
    """The formula: dequantize the weight (its ``rows``), then ``F.linear`` — what every fast path must equal."""
    rows = rows or slice(None)
    offsets = None if weight.offsets is None else weight.offsets[rows]
    w = dequantize_tensor(weight.kind, weight.codes[rows], weight.scales[rows], offsets, x.dtype)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))


def quantized_linear(x: torch.Tensor, weight: QuantizedWeight, bias=None, rows: slice | None = None) -> torch.Tensor:
    """``x Wᵀ + b`` by the fastest path that takes these inputs (module docstring), else the reference."""
    count = x.numel() // max(x.size(-1), 1)
    if (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and 0 < count <= KERNEL_ROWS
        and not (torch.is_grad_enabled() and x.requires_grad)
    ):
        kernel = cpu_kernel(weight.kind)
        if kernel == "native" and native_fits(weight):
            return native_linear(x, weight, bias, rows)
        if kernel == "torch" and torch_fits(weight) and rows is None:
            return torch_linear(x, weight, bias)
    return quantized_linear_reference(x, weight, bias, rows)


def native_fits(weight: QuantizedWeight) -> bool:
    return weight.in_features % INT4_BLOCK == 0 and weight.group_size % INT4_BLOCK == 0 and weight.codes.is_contiguous()


@functools.cache
def _library() -> ctypes.CDLL | None:
    """``kernels/quantized.c`` compiled for this CPU, its functions typed; None where it cannot be built."""
    library = kernels.load("quantized")
    if library is not None:
        i64, pointer, threads = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
        # (x, M, K, codes, scales, [offsets,] N, G, bias, y, threads)
        library.glassformer_int8_linear.argtypes = [pointer, i64, i64, pointer, pointer, i64, i64, pointer, pointer,
                                                    threads]  # fmt: skip
        library.glassformer_int4_linear.argtypes = [pointer, i64, i64, pointer, pointer, pointer, i64, i64, pointer,
                                                    pointer, threads]  # fmt: skip
        library.glassformer_quantized_uses_avx2.restype = ctypes.c_int
    return library


def native_linear(x: torch.Tensor, weight: QuantizedWeight, bias=None, rows: slice | None = None) -> torch.Tensor:
    """glassformer's kernel (``kernels/quantized.c``): float32 ``x`` on the CPU, in_features and G multiples of 32.
    Called once per layer per decoding step: it only reads pointers (``rows`` of the weight are an offset into it)."""
    library = _library()
    if library is None:
        raise RuntimeError(kernels.why_not.get("quantized", "glassformer's quantized kernel is not built"))
    codes, scales, offsets = weight.codes, weight.scales, weight.offsets
    start, n = (0, weight.out_features) if rows is None else (rows.start, rows.stop - rows.start)
    k = weight.in_features
    x2 = x.reshape(-1, k)
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    y = torch.empty(x2.size(0), n)
    b = None if bias is None else bias.float().contiguous().data_ptr()
    code_bytes, groups = codes.size(1) * codes.element_size(), scales.size(1) * 4  # bytes of one row
    c, sc = codes.data_ptr() + start * code_bytes, scales.data_ptr() + start * groups
    threads = torch.get_num_threads()
    if offsets is None:
        library.glassformer_int8_linear(x2.data_ptr(), x2.size(0), k, c, sc, n, weight.group_size, b, y.data_ptr(),
                                        threads)  # fmt: skip
    else:
        o = offsets.data_ptr() + start * groups
        library.glassformer_int4_linear(x2.data_ptr(), x2.size(0), k, c, sc, o, n, weight.group_size, b,
                                        y.data_ptr(), threads)  # fmt: skip
    return y.view(*x.shape[:-1], n)


def torch_fits(weight: QuantizedWeight) -> bool:
    if weight.kind == "int8":
        return weight.group_size == weight.in_features
    return weight.group_size in (32, 64, 128, 256) and weight.out_features % 16 == 0  # its packing needs N % 16


def torch_linear(x: torch.Tensor, weight: QuantizedWeight, bias=None) -> torch.Tensor:
    """torch's CPU kernels: int8 with one scale per output channel, int4 through its packed layout (made once)."""
    x2 = x.reshape(-1, weight.in_features).contiguous()
    if weight.kind == "int8":
        y = torch.ops.aten._weight_int8pack_mm(x2, weight.codes, weight.scales[:, 0].contiguous())
    else:
        key = (tensor_state(weight.codes), tensor_state(weight.scales), tensor_state(weight.offsets))
        if weight._torch_layout is None or weight._torch_layout[0] != key:
            q = unpack_int4(weight.codes).to(torch.int32)
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
            # torch's int4: w = (q − 8) · scale + zero, so zero = o + 8 s; shape (K / G, N, 2)
            zeros = weight.offsets + 8 * weight.scales
            weight._torch_layout = (
                key,
                packed,
                torch.stack((weight.scales, zeros), dim=-1).transpose(0, 1).contiguous(),
            )
        _, packed, scales_and_zeros = weight._torch_layout
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, packed, weight.group_size, scales_and_zeros)
    y = y if bias is None else y + bias
    return y.reshape(*x.shape[:-1], weight.out_features)


def _probe_weight(kind: str, n: int, k: int, seed: int = 0) -> QuantizedWeight:
    generator = torch.Generator().manual_seed(seed)
    return QuantizedWeight.from_float(torch.randn(n, k, generator=generator), kind, 32 if kind == "int4" else None)


def _probe(kind: str, path: str) -> None:
    """A fast path must reproduce the reference on a small product (3 rows, 48 outputs, 64 inputs, a bias)."""
    weight = _probe_weight(kind, 48, 64)
    x, bias = torch.randn(3, 64, generator=torch.Generator().manual_seed(1)), torch.linspace(-1, 1, 48)
    y = native_linear(x, weight, bias) if path == "native" else torch_linear(x, weight, bias)
    expected = quantized_linear_reference(x, weight, bias)
    if not (y - expected).norm() <= 1e-4 * expected.norm():  # glassformer's kernel: 16-bit activations, ~2e-5
        raise RuntimeError(f"the {path} {kind} product differs from the reference")


for _kind in KINDS:
    for _path in ("native", "torch"):
        runtime.register_kernel(f"quantized_{_path}_{_kind}", functools.partial(_probe, _kind, _path))


@functools.cache
def cpu_kernel(kind: str) -> str | None:
    """``"native"``, ``"torch"`` or None: the path that serves decoding for ``kind`` in this process — glassformer's
    own kernel where its probe passes, else torch's, else None (the reference). A fixed order, never a timing, so
    the numbers a machine gives never depend on which was faster in one process."""
    return next((path for path in ("native", "torch") if runtime.kernel_works(f"quantized_{path}_{kind}")), None)


def describe_kernels() -> str:
    """For ``glassformer env``: which path serves each kind here."""
    library = _library()
    native = "glassformer's (AVX2)" if library and library.glassformer_quantized_uses_avx2() else "glassformer's (C)"
    names = {"native": native, "torch": "torch's", None: "reference (dequantize + F.linear)"}
    return ", ".join(f"{kind} {names[cpu_kernel(kind)]}" for kind in KINDS)
