"""Kernels glassformer compiles itself: C files (and the headers they share) beside this module, built on first use
with the system's C compiler for the CPU at hand (``-O3 -march=native``, less what ``GLASSFORMER_CPU``'s class
lacks: ``glassformer.cpu``; OpenMP where the compiler has it: ``FLAG_SETS``) and loaded with ``ctypes``.

The library is kept in ``$GLASSFORMER_CACHE/kernels`` (default ``~/.cache/glassformer/kernels``) under a name
derived from the source, the compiler and this CPU's flags, so it is built once per machine. Without a compiler,
or where the build fails, ``load`` returns None with the reason in ``why_not``, and callers use their plain path.
Torch's own OpenMP runtime (``libgomp.so.1``) is already loaded when this runs, so the library shares its thread
pool instead of starting a second one.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from glassformer import cpu

HERE = Path(__file__).parent
# for this CPU with OpenMP first; without OpenMP the kernels run on one thread; without -march=native (a compiler
# that does not know it) the plain C loops, auto-vectorized for the baseline of the architecture
FLAG_SETS = (["-march=native", "-fopenmp"], ["-march=native"], [])
why_not: dict[str, str] = {}


def _cache() -> Path:
    return Path(os.environ.get("GLASSFORMER_CACHE") or Path.home() / ".cache" / "glassformer") / "kernels"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


def _build(source: Path, compiler: str, extra: list[str], target: Path) -> None:
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        command = [compiler, "-O3", "-shared", "-fPIC", *extra, str(source), "-o", str(out)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "build failed")
        os.replace(out, target)  # whole or not at all: another process may be loading it


@functools.cache
def load(name: str) -> ctypes.CDLL | None:
    """The compiled ``name.c`` of this folder, or None (the reason in ``why_not[name]``)."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        why_not[name] = "no C compiler (cc, gcc or clang) on the PATH"
        return None
    source = HERE / f"{name}.c"
    errors = []
    narrowed = cpu.compiler_flags()  # GLASSFORMER_CPU: no instructions above its class
    for flags in FLAG_SETS:
        extra = [*flags, *narrowed] if "-march=native" in flags else flags
        texts = [source.read_text(), *(h.read_text() for h in sorted(HERE.glob("*.h")))]  # the headers it includes
        key = hashlib.sha256(
            b"\0".join(x.encode() for x in (*texts, compiler, " ".join(extra), _cpu_flags()))
        ).hexdigest()[:16]
        target = _cache() / f"{name}-{key}.so"
        try:
            if not target.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                _build(source, compiler, extra, target)
            return ctypes.CDLL(str(target))
        except (OSError, RuntimeError, subprocess.SubprocessError) as error:
            errors.append(str(error)[:160])
    why_not[name] = f"could not build {source.name}: {errors[-1]}"
    return None
