"""glassformer's own CPU kernels: the C++ of ``csrc/`` built into torch operators (``torch.ops.glassformer.*``) by
``torch.utils.cpp_extension`` on first use, for the CPU at hand, and loaded with ``torch.ops.load_library``.

Flags: ``-O3 -march=native`` less what ``GLASSFORMER_CPU``'s class lacks (``glassformer.cpu.compiler_flags``), and
OpenMP where the compiler has it (``FLAG_SETS``, tried in order; torch's own ``libgomp.so.1`` is already loaded, so
the kernels share its thread pool). The build is kept in ``$GLASSFORMER_CACHE/kernels/<key>`` (default
``~/.cache/glassformer``), the key a hash of the sources, the flags, torch's version and this CPU's flags, so it is
built once per machine (about 15 s; ninja and a C++ compiler needed) and later processes only load it.

Without a compiler or ninja, or where the build fails, ``load()`` is False, ``why_not`` says why (``glassformer
env`` prints it), and the parts run their plain paths. The operators' fake implementations (shapes only, for
``torch.compile`` and ``torch.library.opcheck``) are registered when the library loads; ``quantized`` and
``decoder`` call the operators.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from filelock import FileLock

from glassformer import cpu

SOURCES = Path(__file__).parent / "csrc"
NAME = "glassformer_cpu"
# for this CPU with OpenMP first; without OpenMP the kernels run on one thread; without -march=native (a compiler
# that does not know it) the plain loops, auto-vectorized for the baseline of the architecture
FLAG_SETS = (["-march=native", "-fopenmp"], ["-march=native"], [])
why_not: list[str] = []


def cache_directory() -> Path:
    return Path(os.environ.get("GLASSFORMER_CACHE") or Path.home() / ".cache" / "glassformer") / "kernels"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


def _key(flags: list[str]) -> str:
    texts = [p.read_text() for p in sorted(SOURCES.iterdir()) if p.suffix in (".cpp", ".h")]
    parts = (*texts, " ".join(flags), torch.__version__, _cpu_flags())
    return hashlib.sha256(b"\0".join(x.encode() for x in parts)).hexdigest()[:16]


def _build(flags: list[str], directory: Path) -> Path:
    """Build (or reuse) the library for ``flags`` in ``directory``; its path. The build runs in a child process (which
    may load what it built; this one loads only the finished file), in a folder of its own, and the library is moved
    into place whole, under a lock: another process never loads half a file, and two never build at once."""
    library = directory / f"{NAME}.so"
    directory.mkdir(parents=True, exist_ok=True)
    with FileLock(str(directory / "build.lock")):
        if library.is_file():
            return library
        with tempfile.TemporaryDirectory(dir=directory) as build:
            script = (
                "import sys; from torch.utils import cpp_extension; "
                "cpp_extension.load(sys.argv[1], [sys.argv[2]], extra_cflags=sys.argv[4].split(), "
                "extra_ldflags=sys.argv[5].split(), build_directory=sys.argv[3], is_python_module=False)"
            )
            ldflags = " ".join(f for f in flags if f == "-fopenmp")
            arguments = [NAME, str(SOURCES / "ops.cpp"), build, " ".join(["-O3", *flags]), ldflags]
            result = subprocess.run([sys.executable, "-c", script, *arguments], capture_output=True, text=True)
            if result.returncode != 0:
                lines = result.stderr.splitlines()
                errors = [line for line in lines if ": error:" in line or "Error" in line] or lines[-1:] or ["failed"]
                raise RuntimeError(errors[0].strip()[-200:])
            os.replace(Path(build) / f"{NAME}.so", library)
    return library


@functools.cache
@torch.compiler.assume_constant_result  # torch.compile takes the answer as it is
def load() -> bool:
    """Whether ``torch.ops.glassformer`` is here: built (once per machine) and loaded (once per process)."""
    if os.environ.get("CXX") is None and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        why_not.append("no C++ compiler (c++, g++ or clang++) on the PATH")
        return False
    if shutil.which("ninja") is None and not _ninja_in_environment():
        why_not.append("ninja is not installed (pip install ninja): torch's extension builder needs it")
        return False
    narrowed = cpu.compiler_flags()  # GLASSFORMER_CPU: no instructions above its class
    for flags in FLAG_SETS:
        flags = [*flags, *narrowed] if "-march=native" in flags else flags
        try:
            torch.ops.load_library(str(_build(flags, cache_directory() / _key(flags))))
            _register_fakes()
            return True
        except (OSError, RuntimeError) as error:
            lines = [line for line in str(error).splitlines() if line.strip()]
            why_not.append(f"could not build csrc/ops.cpp with {' '.join(flags) or 'no flags'}: {lines[-1][:160]}")
    return False


def _register_fakes() -> None:
    """What each operator returns, shapes only (no computation): for ``torch.compile`` and ``opcheck``."""

    @torch.library.register_fake("glassformer::quantized_linear")
    def _(x, codes, scales, offsets, bias, group_size, bf16=False):  # (..., K) -> (..., N)
        return x.new_empty((*x.shape[:-1], codes.size(0)))

    @torch.library.register_fake("glassformer::dequantize")
    def _(codes, scales, offsets, group_size):  # (N, K) float32
        return scales.new_empty((codes.size(0), scales.size(1) * group_size), dtype=torch.float32)

    @torch.library.register_fake("glassformer::top_log_probs")
    def _(logits, k):  # (..., V) -> (..., k) values and tokens
        shape = (*logits.shape[:-1], k)
        return logits.new_empty(shape), logits.new_empty(shape, dtype=torch.long)

    @torch.library.register_fake("glassformer::decode_step")
    def _(x, weights, group_sizes, inv_freq, keys, values, positions, first_row, num_heads, kv_heads, eps, scale,
          one_sequence=False, layer_norm=False, gated=True, activation="silu", block_table=None, bf16=False,
          memory_keys=None, memory_values=None, memory_lengths=None, copies=1, position_bias=None,
          post_norm=False, qk_norm=False):  # fmt: skip
        return torch.empty_like(x)  # (batch, 1, d_model); keys and values written in place


def _ninja_in_environment() -> bool:
    """ninja installed as a Python package beside this interpreter (pip's ninja puts it in the same bin folder)."""
    found = (Path(sys.executable).parent / "ninja").is_file()
    if found:
        os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return found


def describe() -> str:
    """For ``glassformer env``: how the operators were built, or why there are none."""
    if not load():
        return f"not built ({why_not[-1]}): the plain paths run"
    return f"built ({torch.ops.glassformer.simd()}) in {cache_directory()}"
