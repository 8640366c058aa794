"""The affine map y = x Wᵀ + b (optionally followed by an activation, y = act(x Wᵀ + b)), with fast CPU paths.

``Linear`` is ``torch.nn.Linear`` (same parameters, same names, weight ``(out_features, in_features)``) whose
forward calls ``linear`` below. Training, GPUs and large batches run ``torch.nn.functional.linear`` unchanged.
Two inference paths for the CPU, each used only where ``glassformer.runtime`` says the hardware has what it needs,
each tested against ``F.linear``:

- **Reordered half-precision products** (CPUs with AMX tiles, whose oneDNN kernels cost more to start than one
  token per sequence needs): with bfloat16/float16 weights, no gradient and a few rows, the same product in
  another order —

      1 row:        W x        (torch.mv, a matrix-vector product)
      2-16 rows:    (W xᵀ)ᵀ    (a GEMM that reads the weight in its stored order)

- **Packed weights**: ``packed_weights(model)`` reorders every ``Linear`` weight into oneDNN's blocked layout (one
  extra copy of those weights, made once and kept until the weight changes or the model goes back to training),
  and ``Linear`` then multiplies with oneDNN, applying its activation inside the same kernel in float32. Used for
  float32 always and for bfloat16 where the CPU packs it (not where AMX serves bfloat16 through the reordered
  products). Each dtype's packing is probed once (``runtime.packed_linear_works``); a CPU that cannot pack a dtype
  (bfloat16 on an AVX2-only CPU) keeps ``F.linear``, and a kernel that fails at run time is switched off and the
  plain path runs.

``bench/kernels.py`` measures both against ``F.linear`` on the machine at hand.

``Linear.quantize("int8" | "int4", group_size)`` replaces the float weight with a ``QuantizedWeight``
(``glassformer.nn.quantization``: integer codes and per-group scales, multiplied by its own kernels); ``weight`` is
then None.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from glassformer import cpu, runtime
from glassformer.nn.activation import ACTIVATIONS, check_activation
from glassformer.nn.quantization import QuantizedWeight, quantized_linear, tensor_state
from glassformer.tolerance import tolerance

MAX_SMALL_ROWS = 16
# oneDNN's post-op for each activation: (attr, scalars, algorithm) of torch.ops.mkldnn._linear_pointwise
ONEDNN_ACTIVATIONS = {
    None: ("none", [], ""),
    "relu": ("relu", [], ""),
    "gelu": ("gelu", [], "none"),
    "gelu_tanh": ("gelu", [], "tanh"),
    "silu": ("swish", [], ""),
}

MAX_PACKED_HALF_ROWS = 64  # half precision is packed up to 64 rows (decoding)


@functools.cache
def reorder_half_precision() -> bool:
    """Whether ``linear`` reorders half-precision products: where the CPU has AMX (``cpu.has_amx``) and the kernel
    is not switched off (``GLASSFORMER_KERNELS``). Asked on first use (so ``GLASSFORMER_CPU`` applies), then
    remembered: ``linear`` asks at every call."""
    return runtime.kernel_works("reordered_half_precision")


def _probe_reordered_products() -> None:
    """Only where AMX's tile kernels are what the reordering avoids; the reordered products must equal F.linear."""
    if not cpu.has_amx():
        raise RuntimeError("no AMX")
    generator = torch.Generator().manual_seed(0)
    weight, x = (torch.randn(*shape, generator=generator).bfloat16() for shape in ((24, 16), (3, 16)))
    with torch.no_grad():
        expected = F.linear(x.float(), weight.float())
        for rows in (x[:1], x):
            y = (torch.mv(weight, rows[0])[None] if len(rows) == 1 else torch.mm(weight, rows.t()).t()).float()
            if not torch.allclose(y, expected[: len(rows)], **tolerance("bf16")):
                raise RuntimeError("the reordered product differs from F.linear")


runtime.register_kernel("reordered_half_precision", _probe_reordered_products)


def min_packed_rows() -> int:
    """The fewest rows for which packed weights are used: with AMX one row goes through the reordered products (or
    plain float32), elsewhere packing pays from one row."""
    return 2 if reorder_half_precision() else 1


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x Wᵀ + b`` for ``x`` of shape ``(..., in_features)`` -> ``(..., out_features)``."""
    half = weight.dtype in (torch.bfloat16, torch.float16)
    if (
        not (half and reorder_half_precision())
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
    packed_from: tuple[int, int] | None = None  # (data pointer, version) of the weight the packed copy was made of

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str | None = None):
        super().__init__(in_features, out_features, bias)
        if activation is not None:
            check_activation(activation)
        self.activation = activation
        self.quantized: QuantizedWeight | None = None

    def quantize(self, kind: str, group_size: int | None = None) -> None:
        """Replace the float weight by its ``kind`` quantization (``glassformer.nn.quantization``), in place."""
        self.quantized = QuantizedWeight.from_float(self.weight, kind, group_size)
        self.drop_weight()

    def drop_weight(self) -> None:
        """Forget the float weight (after ``quantized`` was given its replacement)."""
        del self.weight
        self.register_parameter("weight", None)
        self.packed_weight = self.packed_from = None

    def rows(self, x: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """``x W[start:end]ᵀ + b[start:end]``: the product with some output rows only (one of Q, K, V)."""
        bias = None if self.bias is None else self.bias[start:end]
        if self.quantized is not None:
            return quantized_linear(x, self.quantized, bias, slice(start, end))
        return linear(x, self.weight[start:end], bias)

    def __getstate__(self):  # copies and pickles leave the packed copy behind (oneDNN's opaque tensor has no storage)
        state = self.__dict__.copy()
        state["packed_weight"] = state["packed_from"] = None
        return state

    def train(self, mode: bool = True):
        if mode:  # training changes the weight: the packed copy would go stale
            self.packed_weight = self.packed_from = None
        return super().train(mode)

    def packed_is_current(self) -> bool:
        return self.packed_weight is not None and self.packed_from == tensor_state(self.weight)

    def uses_packed_weight(self, x: torch.Tensor) -> bool:
        if self.packed_weight is None or torch.is_grad_enabled() or x.dtype != self.weight.dtype:
            return False
        if not self.packed_is_current():
            return False
        if torch.is_autocast_enabled(x.device.type):  # autocast computes in its own dtype: leave it to F.linear
            return False
        rows = x.numel() // x.size(-1)
        return rows >= min_packed_rows() and (x.dtype == torch.float32 or rows <= MAX_PACKED_HALF_ROWS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quantized is not None:
            y = quantized_linear(x, self.quantized, self.bias)  # not through the module call: one per layer and step
            return y if self.activation is None else ACTIVATIONS[self.activation](y)
        if self.uses_packed_weight(x):
            try:
                return self._packed_forward(x)
            except RuntimeError as error:  # a kernel the probe passed but this shape does not: never again
                runtime.disable_kernel(_packed_kernel(self.weight.dtype), f"failed at run time: {error}")
                self.packed_weight = None
        y = linear(x, self.weight, self.bias)
        return y if self.activation is None else ACTIVATIONS[self.activation](y)

    def _packed_forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 or self.activation is None:
            return torch.ops.mkldnn._linear_pointwise(
                x, self.packed_weight, self.bias, *ONEDNN_ACTIVATIONS[self.activation]
            )
        # half precision (decoding, at most 64 rows): the activation apart, as on the unpacked path, so that
        # packing changes no result
        y = torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, *ONEDNN_ACTIVATIONS[None])
        return ACTIVATIONS[self.activation](y)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}" + (
            f", activation={self.activation}" if self.activation else ""
        )


def _packed_kernel(dtype: torch.dtype) -> str:
    return "onednn_packed_bf16" if dtype == torch.bfloat16 else "onednn_packed_fp32"


def can_pack(module: nn.Module) -> bool:
    """A CPU ``Linear`` whose dtype this CPU packs (``runtime.packed_linear_works``): float32, and bfloat16 where the
    CPU has no AMX (with AMX the reordered products of ``linear`` serve bfloat16 instead)."""
    if not isinstance(module, Linear) or module.weight is None or module.weight.device.type != "cpu":
        return False
    dtype = module.weight.dtype
    if dtype == torch.bfloat16 and reorder_half_precision():
        return False
    return dtype in (torch.float32, torch.bfloat16) and runtime.packed_linear_works(dtype)


@contextmanager
def packed_weights(model: nn.Module) -> Iterator[None]:
    """Within the block, every packable (``can_pack``) ``Linear`` of ``model`` carries a oneDNN-packed copy of its
    weight. The copy is made the first time and kept after the block, so a chat or a server does not pack again
    at every ``generate``; it is made anew when the weight has changed since (a new data pointer or version: an
    optimizer step, ``load_state_dict``) and dropped when the model goes back to training (``model.train()``) or
    ``unpack_weights(model)`` is called."""
    for layer in model.modules():
        if can_pack(layer) and not layer.packed_is_current():
            try:
                weight = layer.weight.detach()
                layer.packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight, 8)
                layer.packed_from = tensor_state(layer.weight)
            except RuntimeError as error:  # this shape or dtype does not pack here: the plain path for it
                runtime.disable_kernel(_packed_kernel(layer.weight.dtype), f"failed at run time: {error}")
                layer.packed_weight = layer.packed_from = None
    yield


def unpack_weights(model: nn.Module) -> None:
    """Drop the packed copies that ``packed_weights`` keeps (their memory: one more copy of the float weights)."""
    for layer in model.modules():
        if isinstance(layer, Linear):
            layer.packed_weight = layer.packed_from = None
