"""glassformer.runtime: devices, precisions and kernel probes, decided from what torch reports of the hardware."""

import dataclasses
import os
import subprocess
import sys
import warnings

import pytest
import torch

from glassformer import cpu, runtime
from glassformer.backends import kernels
from glassformer.cli.main import main

pytestmark = pytest.mark.cpu_class  # the kernels and precisions chosen depend on the CPU class

# what torch reports on the three kinds of CPU seen so far, and one more
AVX2_ONLY = dict(capability="AVX2", avx512=False, avx512_bf16=False, amx=False, amx_fp16=False, bf16_convert=False,
                 onednn_fp16=False)  # fmt: skip
AVX512_NO_BF16 = {**AVX2_ONLY, "capability": "AVX512", "avx512": True}  # bf16 only emulated with AVX512BW
AVX512_BF16 = {**AVX512_NO_BF16, "avx512_bf16": True}
AMX = {**AVX512_BF16, "amx": True, "amx_fp16": True, "onednn_fp16": True}
AVX_NE_CONVERT = {**AVX2_ONLY, "bf16_convert": True, "onednn_fp16": True}


@pytest.mark.parametrize(
    "features, native",
    [
        (AVX2_ONLY, ("fp32",)),
        (AVX512_NO_BF16, ("fp32",)),
        (AVX512_BF16, ("fp32", "bf16")),
        (AMX, ("fp32", "bf16", "fp16")),
        (AVX_NE_CONVERT, ("fp32", "bf16", "fp16")),
    ],
)
def test_native_precisions_follow_the_cpu_features(features, native, monkeypatch):
    monkeypatch.setattr(cpu, "features", lambda: features)
    assert runtime.native_precisions.__wrapped__("cpu") == native


@pytest.mark.parametrize(
    "native, expected", [(("fp32",), "fp32"), (("fp32", "bf16"), "bf16"), (("fp32", "bf16", "fp16"), "bf16")]
)
def test_auto_precision_is_native_bfloat16_or_float32(native, expected, monkeypatch):
    monkeypatch.setattr(runtime, "native_precisions", lambda device_type, index=None: native)
    placement = runtime.place("cpu", "auto")
    assert placement.precision == expected and placement.dtype == runtime.PRECISIONS[expected]
    assert placement.reason.startswith("auto") and expected in placement.describe()


def test_auto_never_picks_float16_on_a_cpu(monkeypatch):
    """fp16 without a loss scaler is unsafe for training and no faster than bf16 on CPUs: auto stays fp32."""
    monkeypatch.setattr(runtime, "native_precisions", lambda device_type, index=None: ("fp32", "fp16"))
    assert runtime.place("cpu", "auto").precision == "fp32"


def test_an_emulated_precision_runs_as_asked_with_a_warning(monkeypatch):
    monkeypatch.setattr(runtime, "native_precisions", lambda device_type, index=None: ("fp32",))
    with pytest.warns(UserWarning, match="emulated"):
        placement = runtime.place("cpu", "bf16")
    assert placement.precision == "bf16" and "emulated" in placement.reason
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert runtime.place("cpu", "fp32").reason == "as asked"


def test_this_machine_is_described_consistently():
    """Whatever this CPU is: auto's choice is native here, and the summary names it."""
    placement = runtime.place("cpu", "auto")
    assert placement.precision in runtime.native_precisions("cpu")
    line = runtime.env_line("cpu")
    assert torch.__version__ in line and f"auto {placement.precision}" in line
    assert cpu.features()["capability"] == torch.backends.cpu.get_cpu_capability()


@pytest.mark.parametrize(
    "name, message",
    [
        ("tpu", "unknown device"),
        ("cuda:99", "CUDA"),
        ("gpu", "unknown device"),
    ],
)
def test_devices_that_are_not_there_are_refused(name, message):
    with pytest.raises(ValueError, match=message):
        runtime.resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_auto_is_the_cpu_without_a_gpu():
    expected = "mps" if runtime.mps_available() else "cpu"
    assert runtime.resolve_device("auto").type == expected
    with pytest.raises(ValueError, match="no CUDA GPU.*--device cpu"):
        runtime.resolve_device("cuda")


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        runtime.place("cpu", "fp8")


def test_place_model_converts_the_weights():
    model = torch.nn.Linear(3, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bfloat16 may be emulated on this CPU: slow, but it runs
        placement = runtime.place_model(model, "cpu", "bf16")
    assert model.weight.dtype == placement.dtype and runtime.module_device(model).type == "cpu"
    assert runtime.place_model(model).precision == "fp32" and model.weight.dtype == torch.float32  # torch's default


def test_to_device_follows_nested_batches():
    @dataclasses.dataclass
    class Batch:
        src: torch.Tensor
        tokens: int

    batch = {"a": torch.ones(2), "b": (torch.zeros(1), [torch.ones(1)]), "c": Batch(torch.ones(3), 7), "d": "text"}
    moved = runtime.to_device(batch, torch.device("cpu"))
    assert moved["a"] is batch["a"] and isinstance(moved["b"], tuple) and isinstance(moved["b"][1], list)
    assert moved["c"].tokens == 7 and torch.equal(moved["c"].src, torch.ones(3)) and moved["d"] == "text"


def test_kernels_are_probed_once_and_can_be_switched_off():
    assert kernels.kernel_works("fused_adamw_cpu") == runtime.fused_optimizer_works(torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown kernel"):
        kernels.kernel_works("warp_drive")
    saved = dict(kernels._disabled)
    try:
        kernels.disable_kernel("fused_adamw_cpu", "switched off by a test")
        assert not runtime.fused_optimizer_works(torch.device("cpu"))
        assert kernels.kernel_status("fused_adamw_cpu") == "off (switched off by a test)"
    finally:
        kernels._disabled.clear()
        kernels._disabled.update(saved)


def test_a_failing_optimizer_probe_gives_the_plain_optimizer(monkeypatch, tmp_path):
    """Where the fused AdamW kernel fails (simulated), the trainer builds the plain one and still trains."""
    from glassformer.training.loop import TrainConfig
    from glassformer.training.optimizers import make_optimizer

    def broken():
        raise RuntimeError("simulated: no fused kernel here")

    monkeypatch.setitem(kernels.KERNELS, "fused_adamw_cpu", broken)
    kernels._probe.cache_clear()
    try:
        assert not runtime.fused_optimizer_works(torch.device("cpu"))
        model = torch.nn.Linear(4, 2)
        optimizer = make_optimizer(model, TrainConfig(), fused=runtime.fused_optimizer_works(torch.device("cpu")))
        assert not optimizer.defaults["fused"]
    finally:
        kernels._probe.cache_clear()


def test_glassformer_env_prints_the_machine(capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    for line in ("torch:", "native precisions:", "auto precision:", "packed fp32 weights", "fused AdamW:"):
        assert line in out
    assert out.strip().splitlines()[-1].startswith("glassformer env: torch")


def test_glassformer_env_refuses_a_missing_device(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    assert main(["env", "--device", "cuda"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_glassformer_kernels_switches_kernels_off_for_a_bug_report(monkeypatch):
    """GLASSFORMER_KERNELS=reference: every optional kernel off, each saying why, and a quantized product then is
    the reference's, bit for bit; a list of names switches those off alone; an unknown name is one line."""
    from glassformer.backends.cpu import quantized as cpu_quantized
    from glassformer.nn import quantization

    monkeypatch.setenv(kernels.KERNELS_ENV, "reference")
    assert not any(kernels.kernel_works(name) for name in kernels.KERNELS)
    assert kernels.kernel_status("quantized_native_int4") == "off (GLASSFORMER_KERNELS=reference)"
    cpu_quantized.cpu_kernel.cache_clear()
    try:
        weight = quantization.QuantizedWeight.from_float(torch.randn(8, 64), "int4")
        x = torch.randn(1, 64)
        assert cpu_quantized.cpu_kernel("int4") is None
        assert torch.equal(quantization.quantized_linear(x, weight), quantization.quantized_linear_reference(x, weight))
        monkeypatch.setenv(kernels.KERNELS_ENV, "quantized_native_int8, fused_adamw_cpu")
        assert not kernels.kernel_works("fused_adamw_cpu") and not kernels.kernel_works("quantized_native_int8")
        assert kernels.kernel_status("fused_adamw_cpu") == "off (GLASSFORMER_KERNELS)"
        cpu_quantized.cpu_kernel.cache_clear()
        # a fixed order, never a timing: glassformer's kernel where its probe passes, else torch's
        expected = {"int8": "torch" if kernels.kernel_works("quantized_torch_int8") else None,
                    "int4": "native" if kernels.kernel_works("quantized_native_int4") else "torch"}  # fmt: skip
        assert cpu_quantized.cpu_kernel("int8") == expected["int8"]
        if kernels.kernel_works("quantized_torch_int4") or kernels.kernel_works("quantized_native_int4"):
            assert cpu_quantized.cpu_kernel("int4") == expected["int4"]
        monkeypatch.setenv(kernels.KERNELS_ENV, "warp_drive")
        with pytest.raises(ValueError, match=r"GLASSFORMER_KERNELS: unknown kernel\(s\) \['warp_drive'\]"):
            kernels.kernel_works("fused_adamw_cpu")
    finally:
        cpu_quantized.cpu_kernel.cache_clear()


def test_glassformer_env_says_which_kernels_the_variable_switched_off():
    command = [sys.executable, "-m", "glassformer", "env"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300,
                         env={**os.environ, kernels.KERNELS_ENV: "reference"})  # fmt: skip
    assert run.returncode == 0 and "GLASSFORMER_KERNELS=reference" in run.stdout.splitlines()[-1]
    assert "encoder-decoders (paper, T5) in float32: off (GLASSFORMER_KERNELS=reference)" in run.stdout
    assert "int4 reference (dequantize + F.linear)" in run.stdout
