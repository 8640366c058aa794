"""Every path of ``csrc/quantized.h`` — plain C, AVX2, AVX512-VNNI, and ARM's NEON and NEON dot-product — against the
float reference, each built on its own (``kernel_paths.cpp``, one product per run) whatever CPU the tests run on:
the x86 paths this CPU can run, the ARM ones under qemu-user with a cross compiler (Debian's ``qemu-user`` and
``g++-aarch64-linux-gnu``, which CI installs). The operator torch loads is the path of this machine's own build;
this test is what keeps the others from being untested code."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from glassformer.backends.cpu import extension
from glassformer.backends.cpu.quantized import probe_weight

HARNESS = Path(__file__).with_name("kernel_paths.cpp")
QEMU = ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]
# path: (compiler, flags, CPU flags it needs (x86) or None (ARM, under qemu))
PATHS = {
    "C": ("c++", ["-march=x86-64"], set()),
    "AVX2": ("c++", ["-mavx2", "-mfma", "-mf16c"], {"avx2", "fma", "f16c"}),
    "AVX512-VNNI": (
        "c++",
        ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni"],
        {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"},
    ),  # fmt: skip
    "NEON": ("aarch64-linux-gnu-g++", ["-march=armv8-a", "-static"], None),
    "NEON-dotprod": ("aarch64-linux-gnu-g++", ["-march=armv8.2-a+dotprod", "-static"], None),
}
CASES = [  # kind, N, K, G, M: an odd number of blocks (K = 96), groups wider than a block, 1 .. 13 rows
    ("int4", 40, 96, 32, 1), ("int4", 40, 96, 96, 13), ("int4", 24, 576, 64, 8), ("int4", 24, 256, 32, 3),
    ("int8", 40, 96, 32, 5), ("int8", 24, 576, 576, 8), ("int8", 24, 160, 32, 1), ("int8", 24, 256, 64, 12),
]  # fmt: skip


def cpu_flags() -> set[str]:
    try:
        return set(next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split(":")[1].split())
    except (OSError, StopIteration):
        return set()


def unavailable(path: str) -> str | None:
    compiler, _, needs = PATHS[path]
    if shutil.which(compiler) is None:
        return f"no {compiler} (apt-get install g++-aarch64-linux-gnu)" if needs is None else f"no {compiler}"
    if needs is None:
        return None if shutil.which(QEMU[0]) else "no qemu-aarch64 (apt-get install qemu-user)"
    if os.uname().machine != "x86_64":
        return "not an x86-64 machine"
    missing = needs - cpu_flags()
    return f"this CPU lacks {', '.join(sorted(missing))}" if missing else None


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    directory = tmp_path_factory.mktemp("kernel_paths")

    def make(path: str) -> list[str]:
        compiler, flags, needs = PATHS[path]
        binary = directory / path
        if not binary.exists():
            command = [compiler, "-O2", "-std=c++17", *flags, f"-I{extension.SOURCES}", str(HARNESS), "-o", str(binary)]
            result = subprocess.run(command, capture_output=True, text=True, timeout=300)
            assert result.returncode == 0, result.stderr[-2000:]
        return [*(QEMU if needs is None else []), str(binary)]

    return make


def run(command: list[str], directory: Path, kind, codes, scales, offsets, x, group) -> tuple[str, torch.Tensor]:
    """y = x Wᵀ by the harness, and the path it says it ran."""
    n, k, m = scales.size(0), x.size(1), x.size(0)
    parts = [torch.tensor([8 if kind == "int8" else 4, n, k, group, m], dtype=torch.int64), x, codes, scales]
    parts += [] if offsets is None else [offsets]
    (directory / "in").write_bytes(b"".join(p.contiguous().numpy().tobytes() for p in parts))
    result = subprocess.run([*command, str(directory / "in"), str(directory / "out")], capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    y = torch.frombuffer(bytearray((directory / "out").read_bytes()), dtype=torch.float32)
    return result.stdout.strip(), y.reshape(m, n)


@pytest.mark.parametrize("path", list(PATHS))
def test_each_path_computes_the_reference_product(path, build, tmp_path):
    if reason := unavailable(path):
        pytest.skip(f"the {path} path cannot be built or run here: {reason}")
    command = build(path)
    for i, (kind, n, k, group, m) in enumerate(CASES):
        codes, scales, offsets, w = probe_weight(kind, n, k, group, seed=i)
        x = torch.randn(m, k, generator=torch.Generator().manual_seed(i)) * torch.linspace(0.1, 3, k)
        ran, y = run(command, tmp_path, kind, codes, scales, offsets, x, group)
        assert ran == path
        expected = F.linear(x.double(), w.double()).float()
        # 16-bit activations: each output within ~2^-15 of the inputs' scale (measured ~2e-5 relative)
        assert (y - expected).norm() <= 1e-4 * expected.norm(), (kind, n, k, group, m)
