"""CPU classes, and ``GLASSFORMER_CPU``: run this process as if the CPU could do no more than a class it names.

x86 CPUs seen by glassformer fall in five classes, each a superset of the one before:

    class         the CPU has                          what follows
    default       no vector extension assumed          torch's DEFAULT kernels; glassformer's C kernels in plain C
    avx2          AVX2 + FMA                           bfloat16 emulated (~100x slower than float32): auto = fp32
    avx512        + AVX512 F/BW/VL/DQ                  bfloat16 emulated in oneDNN's AVX512 kernels: auto = fp32
    avx512_bf16   + AVX512-BF16                        bfloat16 native: auto = bf16
    amx           + AMX tiles                          bf16 (and fp16 where AMX-FP16) matrix products on tiles

``GLASSFORMER_CPU=<class>`` narrows: every probe of ``glassformer.runtime`` (native precisions, auto precision,
packed-weight and quantized-kernel choices, the demo's preset timing) then reports at most that class, and so do
the kernels underneath, through their own switches, set here when glassformer is imported — before torch's or
oneDNN's kernels first run:

    ATEN_CPU_CAPABILITY   torch's own kernels (and torch.compile's generated code):  default | avx2 | avx512
    ONEDNN_MAX_CPU_ISA    oneDNN's matrix products:  SSE41 | AVX2 | AVX512_CORE_VNNI | AVX512_CORE_BF16
    MKL_ENABLE_INSTRUCTIONS  MKL's (float32 products; MKL narrows on Intel processors only)
    compiler flags        glassformer's C kernels (``glassformer.nn.kernels``): ``-mno-avx512f`` etc.

It only narrows: a class above the CPU's own is refused with one line (``check``), since its instructions would
crash the process. Unset, nothing is narrowed. Extras outside the ladder (AVX-NE-CONVERT's bfloat16 on an
AVX2-class CPU) are kept unless a class is named, and dropped below ``amx`` when one is. On a CPU that is not x86
the classes above ``default`` do not apply. ``.ci/run`` runs the tests marked ``cpu_class`` again under every class
below the machine's own, so a guarantee proved here holds on the smaller machines too.
"""

from __future__ import annotations

import functools
import os
import platform

import torch

ENV = "GLASSFORMER_CPU"
CLASSES = ("default", "avx2", "avx512", "avx512_bf16", "amx")
# what each class sets for the kernels underneath; None: nothing to narrow there
ATEN_CAPABILITY = {"default": "default", "avx2": "avx2", "avx512": "avx512", "avx512_bf16": "avx512", "amx": "avx512"}
ONEDNN_MAX_ISA = {
    "default": "SSE41",
    "avx2": "AVX2",
    "avx512": "AVX512_CORE_VNNI",
    "avx512_bf16": "AVX512_CORE_BF16",
    "amx": None,
}
# MKL's dispatch (torch's float32 matrix products on x86; MKL narrows on Intel processors only)
MKL_INSTRUCTIONS = {"default": "SSE4_2", "avx2": "AVX2", "avx512": "AVX512", "avx512_bf16": "AVX512_E3", "amx": None}
# gcc/clang flags that take away from ``-march=native`` what a class does not have (x86 only; -mno-avx takes AVX2,
# FMA and AVX512 with it, -mno-avx512f every AVX512 extension). A compiler that does not know one falls back to the
# architecture's baseline (``glassformer.nn.kernels.FLAG_SETS``), which is below every class.
COMPILER_FLAGS = {
    "default": ["-mno-avx"],
    "avx2": ["-mno-avx512f", "-mno-avxvnni"],
    "avx512": ["-mno-avx512bf16", "-mno-avx512fp16"],
    "avx512_bf16": ["-mno-avx512fp16"],
    "amx": [],
}


def _flag(name: str) -> bool:
    """One of torch's cpuinfo questions (``torch.cpu._is_avx2_supported``...); these fix no kernel choice."""
    probe = getattr(torch.cpu, name, None)
    try:
        return bool(probe is not None and probe())
    except RuntimeError:
        return False


@functools.cache
def machine_class() -> str:
    """The highest class this CPU meets, asked of the hardware (never of a variable, a vendor or a model name)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return "default"
    met = [
        _flag("_is_avx2_supported"),
        _flag("_is_avx512_supported"),
        _flag("_is_avx512_bf16_supported"),
        _flag("_is_amx_tile_supported"),
    ]
    count = next((i for i, ok in enumerate(met) if not ok), len(met))
    return CLASSES[count]


def requested() -> str | None:
    """The class ``GLASSFORMER_CPU`` names (lower case), or None when it is unset or empty."""
    name = os.environ.get(ENV, "").strip().lower()
    return name or None


def check() -> str | None:
    """The class this process is narrowed to (None: not narrowed); a one-line ``ValueError`` for a name that is not
    a class or a class above this CPU's own."""
    name = requested()
    if name is None:
        return None
    own = machine_class()
    allowed = CLASSES[: CLASSES.index(own) + 1]
    if name not in CLASSES:
        raise ValueError(f"{ENV}={name}: unknown CPU class; choose one of {', '.join(allowed)} (this CPU is {own})")
    if CLASSES.index(name) > CLASSES.index(own):
        raise ValueError(
            f"{ENV}={name} asks for instructions this CPU lacks (its class is {own}); unset it or choose one of "
            f"{', '.join(allowed)}"
        )
    return name


def allows(cls: str | None, feature_class: str) -> bool:
    """Whether a process narrowed to ``cls`` (None: not narrowed) may use what ``feature_class`` brings."""
    return cls is None or CLASSES.index(cls) >= CLASSES.index(feature_class)


def apply() -> None:
    """Set torch's and oneDNN's switches for ``GLASSFORMER_CPU`` (called when glassformer is imported). A name
    that ``check`` refuses sets nothing here; the refusal comes from the first probe that asks (``runtime``)."""
    try:
        cls = check()
    except ValueError:
        return
    if cls is None:
        return
    os.environ["ATEN_CPU_CAPABILITY"] = ATEN_CAPABILITY[cls]
    for variable, values in (("ONEDNN_MAX_CPU_ISA", ONEDNN_MAX_ISA), ("MKL_ENABLE_INSTRUCTIONS", MKL_INSTRUCTIONS)):
        if values[cls]:
            os.environ[variable] = values[cls]


def narrower_classes() -> list[str]:
    """The classes below this CPU's own, nearest first, that a test run narrowed to each proves something on: the
    named ones from ``avx2`` up, or ``default`` where the CPU is of class ``avx2`` (so that every x86 machine runs
    at least one narrowed run). ``make test-classes`` runs the tests marked ``cpu_class`` under each."""
    below = list(CLASSES[1 : CLASSES.index(machine_class())])[::-1]
    return below or (["default"] if machine_class() == "avx2" else [])


def compiler_flags() -> list[str]:
    """Flags added to ``-march=native`` for glassformer's C kernels, so that they use no more than the class."""
    cls = check()
    return [] if cls is None or machine_class() == "default" else COMPILER_FLAGS[cls]
