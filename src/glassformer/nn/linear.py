"""The affine map y = x Wᵀ + b (optionally followed by an activation, y = act(x Wᵀ + b)).

``Linear`` is ``torch.nn.Linear`` (same parameters, same names, weight ``(out_features, in_features)``) whose
forward is ``F.linear`` — the reference — except where a faster CPU path of ``glassformer.backends.cpu.onednn``
serves the same product at inference (each tested against ``F.linear``; training, GPUs and large batches never
take one):

- with ``packed_weights(model)``, every ``Linear`` weight is packed once into oneDNN's blocked layout (one extra copy,
  kept until the weight changes or the model goes back to training) and multiplied by oneDNN, its activation inside
  the same kernel in float32; a kernel that fails at run time is switched off and the plain path runs;
- with AMX, half-precision products of a few rows are reordered (``linear``);
- with ``bf16_products`` (a float output layer of a model quantized with ``activations="bf16"``:
  ``glassformer.models.quantization``), float32 products of 4 or more rows take x and W in bfloat16 where the CPU
  multiplies it (the kernel ``quantized_native_bf16`` works): ``bf16(bf16(x) bf16(W)ᵀ + b)``
  (``bf16_linear_reference``), the weight rounded once and kept beside (packed for oneDNN where it packs bfloat16).

``bench/kernels.py`` measures both against ``F.linear`` on the machine at hand.

``Linear.quantize("int8" | "int4", group_size)`` replaces the float weight with a ``QuantizedWeight``
(``glassformer.nn.quantization``: integer codes and per-group scales); ``weight`` is then None.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from glassformer.backends.cpu import onednn
from glassformer.backends.kernels import disable_kernel, kernel_works
from glassformer.nn.activation import ACTIVATIONS, check_activation
from glassformer.nn.quantization import QuantizedWeight, quantized_linear, tensor_state

BF16_MIN_ROWS = 4  # bf16_products: from 4 rows, as the quantized kernel's bfloat16 products


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x Wᵀ + b`` for ``x`` of shape ``(..., in_features)`` -> ``(..., out_features)``: ``F.linear``, or the
    reordered half-precision product where the CPU has AMX (a few rows, no gradient)."""
    if (
        weight.dtype in (torch.bfloat16, torch.float16)
        and x.dtype == weight.dtype
        and x.device.type == "cpu"
        and not torch.is_grad_enabled()
        and onednn.reorder_half_precision()
    ):
        y = onednn.reordered_linear(x, weight, bias)
        if y is not None:
            return y
    return F.linear(x, weight, bias)


def bf16_linear_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The formula of a float weight's bfloat16 products (``Linear.bf16_products``): x and W rounded to bfloat16,
    multiplied with float32 sums, the bias added, the result rounded to bfloat16: ``bf16(bf16(x) bf16(W)ᵀ + b)``, in
    x's dtype (oneDNN's bfloat16 product; where it does not pack bfloat16, the bias is rounded to bfloat16 first)."""
    y = F.linear(x.bfloat16().float(), weight.bfloat16().float(), None if bias is None else bias.float())
    return y.bfloat16().to(x.dtype)


class Linear(nn.Linear):
    """``torch.nn.Linear`` computed by ``linear`` (same parameters and checkpoint names), or by oneDNN with the
    packed copy of the weight that ``packed_weights`` provides. With ``activation`` (a name of
    ``glassformer.nn.activation.ACTIVATIONS``) the output is act(x Wᵀ + b). ``bf16_products``: products of
    ``BF16_MIN_ROWS`` or more rows in bfloat16 where the CPU multiplies it (``bf16_linear_reference``)."""

    packed_weight: torch.Tensor | None = None
    packed_from: tuple[int, int] | None = None  # (data pointer, version) of the weight the packed copy was made of
    bf16_products = False
    bf16_weight: torch.Tensor | None = None  # the weight in bfloat16 (packed where oneDNN packs it), for those
    bf16_from: tuple[int, int] | None = None

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
        state["packed_weight"] = state["packed_from"] = state["bf16_weight"] = state["bf16_from"] = None
        return state

    def train(self, mode: bool = True):
        if mode:  # training changes the weight: the packed and bfloat16 copies would go stale
            self.packed_weight = self.packed_from = self.bf16_weight = self.bf16_from = None
        return super().train(mode)

    def takes_bf16_products(self, x: torch.Tensor) -> bool:
        """Whether this product runs in bfloat16 (``bf16_products``): a float32 weight and x on the CPU, no gradient,
        ``BF16_MIN_ROWS`` or more rows, and the CPU multiplies bfloat16."""
        if not self.bf16_products or self.weight is None or torch.is_grad_enabled():
            return False
        if self.weight.dtype != torch.float32 or x.dtype != torch.float32 or x.device.type != "cpu":
            return False
        return x.numel() // x.size(-1) >= BF16_MIN_ROWS and kernel_works("quantized_native_bf16")

    def _bf16_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bf16_weight is None or self.bf16_from != tensor_state(self.weight):
            weight, packed = self.weight.detach().bfloat16(), onednn.packs(torch.bfloat16)
            self.bf16_weight, self.bf16_from = onednn.pack(weight) if packed else weight, tensor_state(self.weight)
        xb, weight = x.bfloat16(), self.bf16_weight
        if weight.is_mkldnn:  # oneDNN adds the float32 bias before it rounds
            y = onednn.packed_linear(xb, weight, self.bias)
        else:
            y = linear(xb, weight, None if self.bias is None else self.bias.bfloat16())
        y = y.float()
        return y if self.activation is None else ACTIVATIONS[self.activation](y)

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
        return rows >= onednn.min_packed_rows() and (x.dtype == torch.float32 or rows <= onednn.MAX_PACKED_HALF_ROWS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quantized is not None:
            y = quantized_linear(x, self.quantized, self.bias)  # not through the module call: one per layer and step
            return y if self.activation is None else ACTIVATIONS[self.activation](y)
        if self.takes_bf16_products(x):
            return self._bf16_forward(x)
        if self.uses_packed_weight(x):
            try:
                return self._packed_forward(x)
            except RuntimeError as error:  # a kernel the probe passed but this shape does not: never again
                disable_kernel(onednn.packed_kernel(self.weight.dtype), f"failed at run time: {error}")
                self.packed_weight = None
        y = linear(x, self.weight, self.bias)
        return y if self.activation is None else ACTIVATIONS[self.activation](y)

    def _packed_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation is None or (x.dtype == torch.float32 and self.activation in onednn.ONEDNN_ACTIVATIONS):
            return onednn.packed_linear(x, self.packed_weight, self.bias, self.activation)
        # half precision (decoding, at most 64 rows), or an activation oneDNN has no post-op for (relu2): the
        # activation apart, as on the unpacked path, so that packing changes no result
        return ACTIVATIONS[self.activation](onednn.packed_linear(x, self.packed_weight, self.bias))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}" + (
            f", activation={self.activation}" if self.activation else ""
        )


def can_pack(module: nn.Module) -> bool:
    """A CPU ``Linear`` whose dtype this CPU packs (``backends.cpu.onednn.packs``)."""
    if not isinstance(module, Linear) or module.weight is None or module.weight.device.type != "cpu":
        return False
    return onednn.packs(module.weight.dtype)


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
                layer.packed_weight = onednn.pack(layer.weight)
                layer.packed_from = tensor_state(layer.weight)
            except RuntimeError as error:  # this shape or dtype does not pack here: the plain path for it
                disable_kernel(onednn.packed_kernel(layer.weight.dtype), f"failed at run time: {error}")
                layer.packed_weight = layer.packed_from = None
    yield


def unpack_weights(model: nn.Module) -> None:
    """Drop the packed copies that ``packed_weights`` keeps (their memory: one more copy of the float weights)."""
    for layer in model.modules():
        if isinstance(layer, Linear):
            layer.packed_weight = layer.packed_from = None
