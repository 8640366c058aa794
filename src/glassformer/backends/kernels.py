"""Every optional kernel glassformer may use, in one table, each with the probe that decides whether it works here.

A kernel is a faster way to compute something a part of ``glassformer.nn`` also computes plainly (the reference).
It is used only where its probe passes: the probe runs the kernel once on tiny inputs, the first time the kernel is
asked for (never when a module is imported), and compares it with the plain computation; a kernel that raises or
disagrees is off for the process and the plain path runs. ``disable_kernel`` switches one off after a failure at
run time. ``GLASSFORMER_KERNELS=reference`` switches them all off (``GLASSFORMER_KERNELS=name,name``: those), so a
bug report can say whether a kernel is involved; ``glassformer env`` lists each kernel's status.

    onednn_packed_fp32/bf16     oneDNN's blocked weight layout                   backends.cpu.onednn
    reordered_half_precision    half-precision products in another order (AMX)   backends.cpu.onednn
    quantized_native_int8/int4  glassformer's quantized product (a torch op)     backends.cpu.quantized
    quantized_torch_int8/int4   torch's own int8 / int4 CPU kernels              backends.cpu.quantized
    quantized_dynamic_int8      int8 activations x int8 weights (torch._int_mm)  backends.cpu.quantized
    quantized_native_bf16       glassformer's products with bfloat16 activations  backends.cpu.quantized
    quantized_decoder_step      a whole decoding step in one op                  backends.cpu.decoder
    quantized_native_dequantize glassformer's dequantization (long prompts' tiles) backends.cpu.quantized
    top_log_probs               beam search's candidates, each row read once    backends.cpu.candidates
    fused_adamw_cpu/cuda/mps    torch's fused AdamW                               here
"""

from __future__ import annotations

import functools
import importlib
import os
import warnings

import torch

KERNELS_ENV = "GLASSFORMER_KERNELS"


def _probe_fused_adamw(device: str) -> None:
    p = torch.nn.Parameter(torch.ones(4, device=device))
    optimizer = torch.optim.AdamW([p], lr=0.1, fused=True)
    p.grad = torch.ones_like(p)
    optimizer.step()
    if not torch.all(p < 1):
        raise RuntimeError("fused AdamW did not step")


# name -> its probe: "module:function" (imported when first probed) or a function; the probe raises where the
# kernel does not work here
KERNELS = {
    "onednn_packed_fp32": "glassformer.backends.cpu.onednn:probe_packed_fp32",
    "onednn_packed_bf16": "glassformer.backends.cpu.onednn:probe_packed_bf16",
    "reordered_half_precision": "glassformer.backends.cpu.onednn:probe_reordered_products",
    "quantized_native_int8": "glassformer.backends.cpu.quantized:probe_native_int8",
    "quantized_native_int4": "glassformer.backends.cpu.quantized:probe_native_int4",
    "quantized_torch_int8": "glassformer.backends.cpu.quantized:probe_torch_int8",
    "quantized_torch_int4": "glassformer.backends.cpu.quantized:probe_torch_int4",
    "quantized_dynamic_int8": "glassformer.backends.cpu.quantized:probe_dynamic_int8",
    "quantized_native_bf16": "glassformer.backends.cpu.quantized:probe_native_bf16",
    "quantized_decoder_step": "glassformer.backends.cpu.decoder:probe",
    "quantized_native_dequantize": "glassformer.backends.cpu.quantized:probe_native_dequantize",
    "top_log_probs": "glassformer.backends.cpu.candidates:probe",
    "fused_adamw_cpu": functools.partial(_probe_fused_adamw, "cpu"),
    "fused_adamw_cuda": functools.partial(_probe_fused_adamw, "cuda"),
    "fused_adamw_mps": functools.partial(_probe_fused_adamw, "mps"),
}

_disabled: dict[str, str] = {}


def disable_kernel(name: str, reason: str) -> None:
    """Switch an optional kernel off for the rest of the process; ``kernel_works(name)`` is then False."""
    _disabled[name] = reason


@functools.cache
def _probe(name: str) -> str | None:
    """None if kernel ``name`` works here, else why not (the probe's error, one line)."""
    if name.startswith("onednn_") and not torch.backends.mkldnn.is_available():
        return "this torch build has no oneDNN"
    probe = KERNELS[name]
    try:
        if isinstance(probe, str):
            module, function = probe.split(":")
            probe = getattr(importlib.import_module(module), function)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            probe()
    except Exception as error:  # noqa: BLE001 — any failure means: use the plain path
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else 'failed'}"[:200]
    return None


def switched_off(name: str) -> str | None:
    """Why ``GLASSFORMER_KERNELS`` switches kernel ``name`` off, or None. Its value: ``reference`` (every optional
    kernel off: the plain paths that mirror the formulas, for a bug report or a comparison), or kernel names
    separated by commas (those off); a name that is not a kernel is a one-line ``ValueError``."""
    value = os.environ.get(KERNELS_ENV, "").strip()
    if not value:
        return None
    if value == "reference":
        return f"{KERNELS_ENV}=reference"
    names = {n.strip() for n in value.split(",") if n.strip()}
    if names - set(KERNELS):
        raise ValueError(
            f"{KERNELS_ENV}: unknown kernel(s) {sorted(names - set(KERNELS))}; give 'reference' or names among "
            f"{', '.join(sorted(KERNELS))}"
        )
    return f"{KERNELS_ENV}" if name in names else None


def kernel_works(name: str) -> bool:
    """Whether the optional kernel ``name`` (a key of ``KERNELS``) works on this machine: probed once, on first use,
    unless ``GLASSFORMER_KERNELS`` or a failure switched it off."""
    if name not in KERNELS:
        raise ValueError(f"unknown kernel {name!r}; choose one of {sorted(KERNELS)}")
    return switched_off(name) is None and name not in _disabled and _probe(name) is None


def kernel_status(name: str) -> str:
    """``on``, or ``off (why)``."""
    reason = switched_off(name) or _disabled.get(name) or _probe(name)
    return "on" if reason is None else f"off ({reason})"
