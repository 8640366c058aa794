"""The two flags of every command that trains or runs a model: ``--device`` and ``--precision``, both ``auto`` by
default (``glassformer.runtime.place``: a GPU if torch sees one; bfloat16 where the hardware computes in it,
float32 where it would be emulated). What was chosen, and why, is printed on stderr."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import sys

from glassformer import runtime
from glassformer.backends.kernels import kernel_works
from glassformer.models.quantization import Quantization


def add_device_arguments(parser: argparse.ArgumentParser, training: bool = False) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (default: a CUDA or MPS GPU if there is one, else the CPU), cpu, cuda, cuda:N, mps",
    )
    what = "autocast for the matrix products, float32 weights; fp16 scales the loss" if training else "the weights"
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", *runtime.PRECISIONS],
        help=f"auto (default: bf16 where the hardware computes in it natively, else fp32), fp32, bf16, fp16 ({what})",
    )


def add_quantize_arguments(parser: argparse.ArgumentParser) -> None:
    """``--quantize``, ``--group-size``, ``--quantize-embeddings``, ``--quantize-activations``: quantization of the
    loaded model."""
    parser.add_argument(
        "--quantize",
        choices=["int8", "int4"],
        default=None,
        help="keep the weights as 8- or 4-bit integers with a float scale per group (faster decoding on a CPU, "
        "4-8x less memory); a GGUF file's Q8_0/Q4_0/Q4_1 tensors are used as they are",
    )
    parser.add_argument(
        "--group-size",
        type=int,
        default=None,
        help="weights per scale along the input (default: int8 one per output row, int4 32)",
    )
    parser.add_argument(
        "--quantize-embeddings",
        choices=["float", "int8", "int4"],
        default=None,
        help="the token embeddings and the output layer (default: as the checkpoint stores them)",
    )
    parser.add_argument(
        "--quantize-activations",
        choices=["int8", "bf16"],
        default=None,
        help="int8 (with --quantize int8): multiply many rows at once (prompts, beams, batches) with their activations "
        "quantized to int8 per row as well (W8A8; faster where compute bounds); bf16: every quantized matrix, and a "
        "float output layer, takes 4 or more rows (sequences decoding together, prompts) in bfloat16, where the CPU "
        "multiplies it (AVX512-BF16: ~1.5x faster products), and the key/value cache holds bfloat16 (half the "
        "memory; default: the kernel's 16-bit activations and a float32 cache, finer)",
    )


def quantization_of(args: argparse.Namespace) -> Quantization | None:
    """The ``Quantization`` the flags ask for (None without ``--quantize``); with ``auto`` precision on a CPU whose
    kernel multiplies bfloat16 and no ``--quantize-activations``, bfloat16 activations (``auto_bf16_activations``)."""
    if getattr(args, "quantize", None) is None:
        if any(getattr(args, name, None) for name in ("group_size", "quantize_embeddings", "quantize_activations")):
            raise ValueError("--group-size and --quantize-embeddings/-activations go with --quantize int8|int4")
        return None
    activations = getattr(args, "quantize_activations", None) or ("bf16" if auto_bf16_activations(args) else None)
    return Quantization(args.quantize, args.group_size, args.quantize_embeddings, activations)


def auto_bf16_activations(args: argparse.Namespace) -> bool:
    """``auto`` precision's choice for a quantized model on the CPU, as it is bfloat16 for a float one where the CPU
    computes in it: float32 weights and activations, and the quantized products of 4 or more rows (a float output
    layer's too) take their activations in bfloat16 where glassformer's kernel multiplies them (AVX512-BF16; probed)
    — unless
    ``--quantize-activations`` says otherwise."""
    return bool(
        getattr(args, "quantize", None)
        and getattr(args, "quantize_activations", None) is None
        and getattr(args, "precision", "auto") == "auto"
        and runtime.resolve_device(getattr(args, "device", "auto")).type == "cpu"
        and kernel_works("quantized_native_bf16")
    )


def report_placement(args: argparse.Namespace) -> runtime.Placement:
    """Resolve the flags (a one-line error for a device that is not there) and say what was chosen, on stderr.
    With ``--quantize`` on the CPU, ``auto`` precision is float32 (the quantized kernels take float32 activations),
    their products' activations in bfloat16 where the kernel multiplies it (``auto_bf16_activations``)."""
    precision = args.precision
    quantized_cpu = getattr(args, "quantize", None) and runtime.resolve_device(args.device).type == "cpu"
    if quantized_cpu and precision == "auto":
        precision = "fp32"
    placement = runtime.place(args.device, precision)
    if quantized_cpu and args.precision == "auto":
        reason = "auto with --quantize: the quantized kernels take float32"
        if auto_bf16_activations(args):
            reason += (
                ", their products (and a float output layer's) of 4 or more rows in bfloat16 (AVX512-BF16), "
                "the key/value cache too"
            )
        placement = dataclasses.replace(placement, reason=reason)
    print(f"glassformer: {placement.describe()}", file=sys.stderr)
    return placement


def default_of(function, name: str):
    """The default of ``function``'s parameter ``name``: flags take their defaults from the library, never restate
    them."""
    return inspect.signature(function).parameters[name].default
