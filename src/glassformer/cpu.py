"""What this CPU can do (``features``: asked of torch, never decided by a vendor or model name), the class it falls
in, and ``GLASSFORMER_CPU``: run this process as if the CPU could do no more than a class it names.

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
    TORCHINDUCTOR_CACHE_DIR  torch.compile's cache, one folder per class: its cache key leaves out the vector
                          instructions ATEN_CPU_CAPABILITY chose, so code compiled for AVX2 was loaded by a later
                          AVX512 process and corrupted its memory ("free(): invalid pointer"; torch 2.13)

It only narrows: a class above the CPU's own is refused with one line (``check``), since its instructions would
crash the process. Unset, nothing is narrowed. Extras outside the ladder (AVX-NE-CONVERT's bfloat16 on an
AVX2-class CPU) are kept unless a class is named, and dropped below ``amx`` when one is. On a CPU that is not x86
the classes above ``default`` do not apply. ``make test-classes`` (and so ``.ci/run``) runs the tests marked
``cpu_class`` again under every class below the machine's own (``narrower_classes``), so a guarantee proved here
holds on the smaller machines too.
"""

from __future__ import annotations

import functools
import getpass
import os
import platform
import tempfile

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
# FMA and AVX512 with it, -mno-avx512f every AVX512 extension; AMX's three go one by one). A compiler that does not
# know one falls back to the architecture's baseline (``glassformer.nn.kernels.FLAG_SETS``), below every class.
NO_AMX = ["-mno-amx-tile", "-mno-amx-int8", "-mno-amx-bf16"]
COMPILER_FLAGS = {
    "default": ["-mno-avx", *NO_AMX],
    "avx2": ["-mno-avx512f", "-mno-avxvnni", *NO_AMX],
    "avx512": ["-mno-avx512bf16", "-mno-avx512fp16", *NO_AMX],
    "avx512_bf16": ["-mno-avx512fp16", *NO_AMX],
    "amx": [],
}


def _flag(name: str) -> bool:
    """One of torch's cpuinfo questions (``torch.cpu._is_avx2_supported``...): these fix no kernel choice, so they
    may be asked before ``apply``."""
    probe = getattr(torch.cpu, name, None)
    try:
        return bool(probe is not None and probe())
    except RuntimeError:
        return False


def _onednn_flag(name: str) -> bool:
    """One of oneDNN's questions (``torch.ops.mkldnn._is_mkldnn_bf16_supported``...): the first one fixes oneDNN's
    instruction set, so only ``features`` asks them, after ``apply``."""
    try:
        return bool(getattr(torch.ops.mkldnn, name)())
    except (AttributeError, RuntimeError):
        return False


def _x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")


@functools.cache
def machine_class() -> str:
    """The highest class this CPU meets, asked of the hardware (never of a variable, a vendor or a model name)."""
    if not _x86():
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


def _allows(cls: str | None, feature_class: str) -> bool:
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
    os.environ[COMPILE_CACHE_ENV] = compile_cache(cls)
    for variable, values in (("ONEDNN_MAX_CPU_ISA", ONEDNN_MAX_ISA), ("MKL_ENABLE_INSTRUCTIONS", MKL_INSTRUCTIONS)):
        if values[cls] and _x86():  # their names are x86 instruction sets
            os.environ[variable] = values[cls]


COMPILE_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def compile_cache(cls: str) -> str:
    """torch.compile's cache folder for a process narrowed to ``cls``: a folder of its own inside the one torch would
    use (``TORCHINDUCTOR_CACHE_DIR``, else torch's default ``<tmp>/torchinductor_<user>``)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = str(os.getuid()) if hasattr(os, "getuid") else "user"
    base = os.environ.get(COMPILE_CACHE_ENV) or os.path.join(tempfile.gettempdir(), f"torchinductor_{user}")
    if os.path.basename(base).startswith("glassformer-cpu-"):  # applied before in this process
        base = os.path.dirname(base)
    return os.path.join(base, f"glassformer-cpu-{cls}")


def narrower_classes() -> list[str]:
    """The classes below this CPU's own, nearest first, that a test run narrowed to each proves something on: the
    named ones from ``avx2`` up, or ``default`` where the CPU is of class ``avx2`` (so that every x86 machine runs
    at least one narrowed run). ``make test-classes`` runs the tests marked ``cpu_class`` under each."""
    below = list(CLASSES[1 : CLASSES.index(machine_class())])[::-1]
    return below or (["default"] if machine_class() == "avx2" else [])


def compiler_flags() -> list[str]:
    """Flags added to ``-march=native`` for glassformer's C kernels, so that they use no more than the class."""
    cls = check()
    return [] if cls is None or not _x86() else COMPILER_FLAGS[cls]


# --- what the CPU can do ----------------------------------------------------------------------------------------


@functools.cache
def features() -> dict[str, bool | str]:
    """What torch reports of this CPU: its vector capability (``DEFAULT``, ``AVX2``, ``AVX512``, ...) and the
    half-precision instructions that make bfloat16/float16 fast — no more than ``GLASSFORMER_CPU``'s class allows
    (a class the CPU does not reach is a one-line ``ValueError`` here)."""
    cls = check()
    # oneDNN's bf16 check: AVX512 BW/VL/DQ (which only emulate bf16 arithmetic) or AVX-NE-CONVERT on x86, the
    # BF16 extension on ARM. Without AVX512 a yes can only come from the native instructions.
    onednn_bf16 = _onednn_flag("_is_mkldnn_bf16_supported")
    top = _allows(cls, "amx")  # extras outside the ladder stay only where no class is named (or amx)
    return {
        "capability": torch.backends.cpu.get_cpu_capability(),
        "avx512": _flag("_is_avx512_supported") and _allows(cls, "avx512"),
        "avx512_bf16": _flag("_is_avx512_bf16_supported") and _allows(cls, "avx512_bf16"),
        "amx": _flag("_is_amx_tile_supported") and top,
        "amx_fp16": _flag("_is_amx_fp16_supported") and top,
        "bf16_convert": onednn_bf16 and not _flag("_is_avx512_supported") and top,  # AVX-NE-CONVERT (x86), ARM BF16
        "onednn_fp16": _onednn_flag("_is_mkldnn_fp16_supported") and top,  # AVX512-FP16, AVX-NE-CONVERT or ARM FP16
    }


def has_amx() -> bool:
    """AMX tiles: oneDNN then multiplies half precision with tile kernels that cost more to start than a few rows
    need, so ``glassformer.nn.linear`` reorders those products (see there)."""
    return bool(features()["amx"])


def name() -> str:
    """The processor's name, for display only (never used to choose anything)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_class() -> str:
    """``avx2``, or ``avx2 (GLASSFORMER_CPU; this CPU is avx512_bf16)`` when narrowed; says so when torch chose its
    own kernels before glassformer could narrow them (torch ran an operation before glassformer was imported)."""
    cls, own = check(), machine_class()
    if cls is None:
        return own
    text = f"{cls} ({ENV}; this CPU is {own})"
    expected, actual = ATEN_CAPABILITY[cls].upper(), features()["capability"]
    if actual not in (expected, "DEFAULT"):
        text += f"; torch's kernels stay {actual}: set ATEN_CPU_CAPABILITY={expected.lower()} too"
    return text
