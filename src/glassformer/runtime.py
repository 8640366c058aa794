"""What this machine can do: the device to run on, which precisions are fast there, which optional kernels work.

Everything here is asked of torch (never decided by a vendor or model name), probed once per process and
remembered. Every command, the training loop, generation and the benchmarks ask here (and ``glassformer.cpu`` for
the CPU's instructions); nothing else probes hardware.

    device       --device auto|cpu|cuda|cuda:N|mps     auto: cuda if torch sees a GPU, else mps, else cpu
    precision    --precision auto|fp32|bf16|fp16       auto: the fastest correct choice on that device

A half precision is *native* where the hardware computes in it:

    CUDA   bf16: torch.cuda.is_bf16_supported() without emulation (Ampere and newer); fp16: compute capability ≥ 7
    CPU    bf16: AVX512-BF16, AMX, or AVX-NE-CONVERT; fp16: AMX-FP16, AVX512-FP16 or AVX-NE-CONVERT (what oneDNN
           reports through torch: ``glassformer.cpu.features``, which ``GLASSFORMER_CPU`` narrows to a class).
           Elsewhere a bfloat16 matrix product is emulated: ~100x slower than float32 on an AVX2-only CPU, so
           ``auto`` never picks it there.
    MPS    fp16

``auto`` picks bf16 where it is native, else fp16 on a GPU where that is native (training then scales the loss),
else fp32. A precision asked for explicitly is used as asked, with a warning when it is emulated.

The optional kernels (oneDNN's packed weights, the fused optimizer, glassformer's own) are tabled and probed in
``glassformer.backends.kernels``; ``environment`` reports them.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import importlib.util
import os
import platform
import shutil
import warnings

import torch

from glassformer import cpu
from glassformer.backends import kernels
from glassformer.backends.cpu import onednn
from glassformer.backends.kernels import KERNELS_ENV

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"


# --- the device -------------------------------------------------------------------------------------------------


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None) -> the best device torch sees; ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` are checked
    to exist, with a one-line error naming the fix."""
    if isinstance(name, torch.device):
        name = str(name)
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if mps_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"unknown device {name!r}; choose {DEVICE_CHOICES}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: torch sees no CUDA GPU on this machine; use --device cpu (or auto)")
        count = torch.cuda.device_count()
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= count:
            raise ValueError(f"device {name!r}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
        return torch.device("cuda", index)
    if device.type == "mps" and not mps_available():
        raise ValueError(f"device {name!r}: torch has no MPS (Apple GPU) backend here; use --device cpu (or auto)")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {name!r}; choose {DEVICE_CHOICES}")
    return device


def to_device(batch, device: torch.device):
    """``batch`` (a tensor, or a dict / list / tuple / dataclass of them) on ``device``. To a GPU the tensors travel
    from pinned memory without blocking, so the copy overlaps the work already queued there."""
    if isinstance(batch, torch.Tensor):
        if batch.device == device:
            return batch
        if device.type == "cuda" and batch.device.type == "cpu":
            return batch.pin_memory().to(device, non_blocking=True)
        return batch.to(device)
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, list | tuple) and not hasattr(batch, "_fields"):
        return type(batch)(to_device(value, device) for value in batch)
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        fields = {f.name: to_device(getattr(batch, f.name), device) for f in dataclasses.fields(batch) if f.init}
        return dataclasses.replace(batch, **fields)
    return batch


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's parameters (the CPU for a module without any)."""
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


# --- precisions -------------------------------------------------------------------------------------------------


@functools.cache
def native_precisions(device_type: str, index: int | None = None) -> tuple[str, ...]:
    """The precisions the hardware of ``device_type`` computes in natively, fastest-first wins ties: always fp32,
    plus bf16 / fp16 where they are native."""
    native = ["fp32"]
    if device_type == "cuda":
        device = torch.device("cuda", index if index is not None else torch.cuda.current_device())
        with torch.cuda.device(device):
            if torch.cuda.is_bf16_supported(including_emulation=False):
                native.append("bf16")
        if torch.cuda.get_device_capability(device)[0] >= 7:
            native.append("fp16")
    elif device_type == "mps":
        native.append("fp16")
    elif device_type == "cpu":
        f = cpu.features()
        if f["avx512_bf16"] or f["amx"] or f["bf16_convert"]:
            native.append("bf16")
        if f["amx_fp16"] or f["onednn_fp16"]:
            native.append("fp16")
    return tuple(native)


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where and in what precision a model runs: ``device``, ``precision`` (``fp32``/``bf16``/``fp16``), its
    ``dtype``, and ``reason``, a short sentence saying why (printed by every command)."""

    device: torch.device
    precision: str
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        return PRECISIONS[self.precision]

    @property
    def half(self) -> bool:
        return self.precision != "fp32"

    def describe(self) -> str:
        return f"device {self.device}, precision {self.precision} ({self.reason})"


def place(device: str | torch.device | None = "auto", precision: str | None = "auto") -> Placement:
    """Resolve ``--device`` and ``--precision``. ``auto`` precision: bf16 where native, else fp16 on a GPU where
    native, else fp32. An explicit half precision that the hardware only emulates is kept, with a warning."""
    resolved = resolve_device(device)
    precision = (precision or "auto").strip().lower()
    if precision not in ("auto", *PRECISIONS):
        raise ValueError(f"unknown precision {precision!r}; choose auto, fp32, bf16 or fp16")
    native = native_precisions(resolved.type, resolved.index)
    where = describe_hardware(resolved)
    if precision == "auto":
        if "bf16" in native:
            return Placement(resolved, "bf16", f"auto: bfloat16 is native on {where}")
        if "fp16" in native and resolved.type != "cpu":
            return Placement(resolved, "fp16", f"auto: float16 is native on {where}, bfloat16 is not")
        return Placement(resolved, "fp32", f"auto: half precision is emulated on {where}, float32 is faster")
    if precision not in native:
        warnings.warn(
            f"{precision} is emulated on {where} and much slower than fp32 there; use --precision auto or fp32",
            stacklevel=2,
        )
        return Placement(resolved, precision, f"as asked; emulated on {where}")
    return Placement(resolved, precision, "as asked")


def place_model(model: torch.nn.Module, device=None, precision: str | None = None) -> Placement:
    """Move an inference model to ``device`` in ``precision`` (its weights converted: decoding reads every weight
    once per token, so half-precision weights halve the bytes read). None means torch's default, ``cpu`` / ``fp32``;
    ``auto`` asks ``place``. Returns the placement used."""
    placement = place(device or "cpu", precision or "fp32")
    model.to(device=placement.device, dtype=placement.dtype)
    return placement


def describe_hardware(device: torch.device) -> str:
    """A few words on the device: ``this CPU (AVX2)``, ``NVIDIA H100 (compute 9.0)``."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} (compute {major}.{minor})"
    if device.type == "mps":
        return "the Apple GPU (MPS)"
    f = cpu.features()
    extras = [name for name in ("avx512_bf16", "amx", "bf16_convert") if f[name]]
    return f"this CPU ({f['capability']}{'+' + '+'.join(extras) if extras else ''})"


def release_free_memory() -> None:
    """Hand back to the system the memory a load freed on its way (float copies of weights that were then quantized,
    a file's parsed tables): glibc keeps freed blocks for reuse, and the process stays that much larger. Does
    nothing where the C library is not glibc."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


# --- optional kernels: their table and probes are glassformer.backends.kernels ------------------------------


def fused_optimizer_works(device: torch.device) -> bool:
    name = f"fused_adamw_{device.type}"
    return name in kernels.KERNELS and kernels.kernel_works(name)


def compile_status(device: torch.device) -> str:
    """Whether ``torch.compile`` has what it needs: a C++ compiler on the CPU, Triton on a GPU."""
    if device.type == "cuda":
        return "ready (triton)" if importlib.util.find_spec("triton") else "off (triton is not installed)"
    if device.type == "cpu":
        compiler = os.environ.get("CXX") or next((c for c in ("g++", "c++", "clang++") if shutil.which(c)), None)
        return f"ready ({compiler})" if compiler else "off (no C++ compiler found)"
    return "untested on this device"


# --- the summary ------------------------------------------------------------------------------------------------


def environment(device: str | torch.device | None = "auto") -> dict[str, str]:
    """Everything a bug report needs, as ``{name: value}`` lines (``glassformer env`` prints them)."""
    from glassformer._version import __version__

    resolved = resolve_device(device)
    f = cpu.features()
    auto = place(resolved, "auto")
    info = {
        "glassformer version": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(resolved) + ("" if resolved.type == "cpu" else f" — {describe_hardware(resolved)}"),
        "cpu": f"{cpu.name()}; capability {f['capability']}; "
        + ", ".join(f"{k} {'yes' if f[k] else 'no'}" for k in ("avx512_bf16", "amx", "bf16_convert", "amx_fp16")),
        "cpu class": cpu.describe_class(),
        "threads": str(torch.get_num_threads()),
        "native precisions": ", ".join(native_precisions(resolved.type, resolved.index)),
        "auto precision": f"{auto.precision} ({auto.reason})",
        "packed fp32 weights (oneDNN)": kernels.kernel_status("onednn_packed_fp32"),
        "packed bf16 weights (oneDNN)": kernels.kernel_status("onednn_packed_bf16"),
        "reordered half-precision products": kernels.kernel_status("reordered_half_precision"),
        "int8 activations (torch._int_mm)": kernels.kernel_status("quantized_dynamic_int8"),
        "bf16 activations (AVX512-BF16 products)": kernels.kernel_status("quantized_native_bf16"),
        "beam search's candidates (top_log_probs)": kernels.kernel_status("top_log_probs"),
        "fused AdamW": "on" if fused_optimizer_works(resolved) else "off (plain AdamW)",
        "torch.compile": compile_status(resolved),
    }
    if resolved.type == "cuda":
        info["attention kernels"] = ", ".join(
            name
            for name, ok in (
                ("flash", torch.backends.cuda.is_flash_attention_available()),
                ("memory-efficient", torch.backends.cuda.mem_efficient_sdp_enabled()),
                ("math", True),
            )
            if ok
        )
        info["cuda"] = f"{torch.version.cuda}; {torch.cuda.device_count()} GPU(s)"
    return info


def env_line(device: str | torch.device | None = "auto") -> str:
    """One line for bench headers and closing notes: torch, device, CPU capability, precisions, threads."""
    resolved = resolve_device(device)
    auto = place(resolved, "auto")
    f, cls = cpu.features(), cpu.check() or cpu.machine_class()
    native = "/".join(native_precisions(resolved.type, resolved.index))
    packed = [p for p, d in (("fp32", torch.float32), ("bf16", torch.bfloat16)) if onednn.packs(d)]
    return (
        f"glassformer env: torch {torch.__version__} | device {resolved} ({describe_hardware(resolved)}) | "
        f"cpu {cpu.name()} {f['capability']} | class {cls} | native {native} "
        f"| auto {auto.precision} | threads {torch.get_num_threads()} | packed {'/'.join(packed) or 'none'}"
        f"{' | amx' if cpu.has_amx() else ''}"
        f"{f' | {KERNELS_ENV}={os.environ[KERNELS_ENV]}' if os.environ.get(KERNELS_ENV, '').strip() else ''}"
    )
