"""GLASSFORMER_CPU: a process narrowed to a CPU class reports no more than that class in every probe, sets torch's and
oneDNN's own switches before their kernels run, builds glassformer's C kernels for it, and refuses in one line a
class the CPU does not reach. The classes a machine can fake are tested on the hardware (in subprocesses); the
ones above it, on the features torch would report there."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from glassformer import cpu, runtime
from glassformer.backends.cpu import onednn

pytestmark = pytest.mark.cpu_class
ORIGINAL_ENVIRONMENT = dict(os.environ)  # as the session started (glassformer's import has applied GLASSFORMER_CPU)

# what torch's cpuinfo questions answer on each class of CPU (cpu._flag's names)
HARDWARE = {
    "avx2": {"_is_avx2_supported"},
    "avx512_bf16": {"_is_avx2_supported", "_is_avx512_supported", "_is_avx512_bf16_supported"},
    "amx": {"_is_avx2_supported", "_is_avx512_supported", "_is_avx512_bf16_supported", "_is_amx_tile_supported",
            "_is_amx_fp16_supported"},
}  # fmt: skip


@pytest.fixture
def machine(monkeypatch):
    """``machine(kind, narrowed_to)``: this process as if its CPU were of class ``kind`` (what torch would report
    there, oneDNN's bf16/fp16 answers included) with ``GLASSFORMER_CPU`` set to ``narrowed_to`` (None: unset)."""

    def fake(kind: str, narrowed_to: str | None) -> None:
        flags = HARDWARE[kind]
        monkeypatch.setattr(cpu, "_flag", lambda name: name in flags)
        onednn = {"_is_mkldnn_bf16_supported": kind != "avx2", "_is_mkldnn_fp16_supported": kind == "amx"}
        monkeypatch.setattr(cpu, "_onednn_flag", lambda name: onednn[name])
        monkeypatch.setattr(cpu.platform, "machine", lambda: "x86_64")
        if narrowed_to is None:
            monkeypatch.delenv(cpu.ENV, raising=False)
        else:
            monkeypatch.setenv(cpu.ENV, narrowed_to)
        for cached in (cpu.machine_class, cpu.features, runtime.native_precisions):
            cached.cache_clear()

    yield fake
    monkeypatch.undo()
    for cached in (cpu.machine_class, cpu.features, runtime.native_precisions):
        cached.cache_clear()


@pytest.mark.parametrize(
    "kind, narrowed_to, native, amx",
    [
        ("avx512_bf16", None, ("fp32", "bf16"), False),
        ("avx512_bf16", "avx512_bf16", ("fp32", "bf16"), False),
        ("avx512_bf16", "avx512", ("fp32",), False),  # AVX512 without BF16: bf16 emulated
        ("avx512_bf16", "avx2", ("fp32",), False),  # the "AVX2 only, auto = fp32" machine
        ("amx", None, ("fp32", "bf16", "fp16"), True),
        ("amx", "avx512_bf16", ("fp32", "bf16"), False),
        ("amx", "avx2", ("fp32",), False),
        ("avx2", "default", ("fp32",), False),
    ],
)
def test_narrowing_takes_away_what_the_class_lacks(machine, kind, narrowed_to, native, amx):
    machine(kind, narrowed_to)
    assert cpu.machine_class() == kind
    assert runtime.native_precisions("cpu") == native
    assert runtime.place("cpu", "auto").precision == ("bf16" if "bf16" in native else "fp32")
    assert cpu.has_amx() == amx
    features = cpu.features()
    assert features["avx512"] == (cpu.CLASSES.index(narrowed_to or kind) >= cpu.CLASSES.index("avx512"))
    if narrowed_to in ("avx2", "default"):  # oneDNN packs bfloat16 only from AVX512 (BW/VL/DQ) up
        assert not onednn.packs(torch.bfloat16)
    shown = cpu.describe_class()
    assert shown.startswith(narrowed_to or kind) and (narrowed_to is None or f"this CPU is {kind}" in shown)


@pytest.mark.parametrize(
    "kind, asked, message",
    [
        ("avx2", "avx512", "lacks (its class is avx2); unset it or choose one of default, avx2"),
        ("avx512_bf16", "amx", "its class is avx512_bf16"),
        ("amx", "sse", "unknown CPU class; choose one of default, avx2, avx512, avx512_bf16, amx"),
    ],
)  # fmt: skip
def test_a_class_the_cpu_does_not_reach_is_refused_in_one_line(machine, kind, asked, message):
    machine(kind, asked)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as caught:
        cpu.features()
    assert "\n" not in str(caught.value) and str(caught.value).startswith(f"GLASSFORMER_CPU={asked}")


SWITCHES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", cpu.COMPILE_CACHE_ENV)


def test_apply_sets_the_switches_of_the_kernels_underneath(machine, monkeypatch):
    for variable in SWITCHES:  # set, then removed: monkeypatch restores each one, whatever apply() writes
        monkeypatch.setenv(variable, "")  # (a delenv of an absent variable records nothing to restore: the
        monkeypatch.delenv(variable)  # switches then stayed set for the rest of the test session)
    machine("amx", "avx2")
    cpu.apply()
    assert os.environ["ATEN_CPU_CAPABILITY"] == "avx2" and os.environ["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert os.environ["MKL_ENABLE_INSTRUCTIONS"] == "AVX2"
    assert "-mno-avx512f" in cpu.compiler_flags()
    # torch.compile's cache: a folder per class, inside torch's own (or the user's), never nested on a second apply
    cache = Path(os.environ[cpu.COMPILE_CACHE_ENV])
    assert cache.name == "glassformer-cpu-avx2" and cache.parent.name.startswith("torchinductor_")
    cpu.apply()
    assert Path(os.environ[cpu.COMPILE_CACHE_ENV]) == cache
    monkeypatch.setenv(cpu.COMPILE_CACHE_ENV, "/my/cache")
    cpu.apply()
    assert os.environ[cpu.COMPILE_CACHE_ENV] == "/my/cache/glassformer-cpu-avx2"
    machine("amx", "sse")  # refused: nothing is set, the first probe says why
    monkeypatch.delenv("ATEN_CPU_CAPABILITY")
    cpu.apply()
    assert "ATEN_CPU_CAPABILITY" not in os.environ


def test_no_switch_outlives_the_tests_that_narrow():
    """Runs after the tests above (file order): a switch left set would narrow every later test of the session,
    and the processes it starts, while this process's kernels stay wide (resume-equality broke on AVX512)."""
    assert {v: os.environ.get(v) for v in SWITCHES} == {v: ORIGINAL_ENVIRONMENT.get(v) for v in SWITCHES}


def run_narrowed(cls: str, code: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**environment, cpu.ENV: cls, "ONEDNN_VERBOSE": "1"})  # fmt: skip


@pytest.mark.parametrize("cls", ["default", "avx2"])
def test_a_narrowed_process_runs_torch_onednn_and_its_own_kernels_at_that_class(cls):
    """On the hardware: every class up to this CPU's own (here: those at or below AVX2, which every x86 CI machine
    reaches). torch reports the class's capability, oneDNN runs no higher ISA, glassformer's kernels say so, and a
    packed product and a quantized one still equal the reference."""
    if cpu.machine_class() == "default" or cpu.CLASSES.index(cls) > cpu.CLASSES.index(cpu.machine_class()):
        pytest.skip(f"this CPU ({cpu.machine_class()}) cannot run as {cls}")
    code = """
import torch
from glassformer import runtime
from glassformer.backends.cpu import quantized
from glassformer.nn import quantization
from glassformer.nn.linear import Linear, packed_weights
print("capability", torch.backends.cpu.get_cpu_capability())
print(runtime.env_line("cpu"))
print("quantized", quantized.describe())
layer = Linear(32, 16).eval()
x = torch.randn(3, 32)
with torch.no_grad(), packed_weights(layer):
    assert layer.uses_packed_weight(x)
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
torch.manual_seed(0)
weight = quantization.QuantizedWeight.from_float(torch.randn(16, 64), "int4")
x = torch.randn(2, 64)
reference = quantization.quantized_linear_reference(x, weight)
# its 16-bit fixed-point activations: within 1e-3 of the largest output, as tests/nn/test_quantization.py holds it
assert (quantization.quantized_linear(x, weight) - reference).abs().max() <= 1e-3 * reference.abs().max()
"""
    result = run_narrowed(cls, code)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert f"capability {cls.upper()}" in out and f"| class {cls} |" in out and "| auto fp32 |" in out
    isa = next(line for line in (result.stdout + result.stderr).splitlines() if "cpu,isa:" in line)
    assert ("SSE4.1" if cls == "default" else "AVX2") in isa and "512" not in isa
    if cls == "default":  # the C kernels were built without AVX2
        assert "(AVX2)" not in out.split("quantized", 1)[1]


def test_the_cli_refuses_an_unknown_class_in_one_line():
    result = subprocess.run([sys.executable, "-m", "glassformer", "env"], capture_output=True, text=True, timeout=300,
                            env={**os.environ, cpu.ENV: "avx1024"})  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"glassformer: error: GLASSFORMER_CPU=avx1024: unknown CPU class; choose one of "
        f"{', '.join(cpu.CLASSES[: cpu.CLASSES.index(cpu.machine_class()) + 1])} "
        f"(this CPU is {cpu.machine_class()})"
    )


def test_this_process_runs_at_the_class_it_reports():
    """Whatever class this test run was started at (make test-classes starts one per narrower class): torch's own
    kernels were narrowed before they first ran, and every probe reports no more than the class."""
    cls = cpu.check() or cpu.machine_class()
    capability = torch.backends.cpu.get_cpu_capability()
    if cpu.check() is not None:
        assert capability == cpu.ATEN_CAPABILITY[cls].upper(), cpu.describe_class()
        assert "torch's kernels stay" not in cpu.describe_class()
    if cpu.check() is not None and cpu.CLASSES.index(cls) < cpu.CLASSES.index("avx512_bf16"):
        assert "bf16" not in runtime.native_precisions("cpu") and runtime.place("cpu", "auto").precision == "fp32"
    assert f"| class {cls} |" in runtime.env_line("cpu")
