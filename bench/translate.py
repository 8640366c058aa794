"""Translation speed by precision: ``glassformer evaluate``'s work (beam search over a split of a `train translate`
run, BLEU with sacrebleu) in float32 — the baseline —, bfloat16 where this CPU has it natively, and int8 weights with
16-bit, bfloat16 (where the kernel multiplies it: `evaluate --quantize int8`'s choice there) or int8 activations and a
float or int8 output layer. Per row: seconds, the speed-up against float32 and BLEU.
Then sentences one at a time (``translate``'s work for a user typing; the first ``--single`` sources of the split),
greedy and beam search: float32, and quantized weights through the modules and through the fused decoding step
(``glassformer.generation.fused_step``, the quantized models' step where its operator works). Rows run one after
another in this process; run it with nothing else running (``make demo``'s run, or any other).

    python bench/translate.py --model runs/de-en-... [--beam 4] [--limit N] [--split test] [--single 50]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from glassformer import runtime
from glassformer.backends.kernels import kernel_works
from glassformer.generation import fused_step
from glassformer.models.quantization import Quantization
from glassformer.pipelines.translator import Translator
from glassformer.training.evaluation import evaluate_translation
from glassformer.training.run_directory import read_run_record
from glassformer.training.translation import RUN_FILE, DataSpec

ROWS = {  # name -> (precision, quantization)
    "float32": ("fp32", None),
    "bfloat16": ("bf16", None),
    "int8": ("fp32", Quantization("int8")),
    "int8, bf16 activations": ("fp32", Quantization("int8", activations="bf16")),
    "int8, int8 activations": ("fp32", Quantization("int8", activations="int8")),
    "int8, int8 activations and output layer": ("fp32", Quantization("int8", embeddings="int8", activations="int8")),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a `train translate` run directory")
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--limit", type=int, default=None, help="only the first N pairs")
    parser.add_argument("--split", default="test")
    parser.add_argument("--single", type=int, default=50, help="sentences translated one at a time (0: none)")
    args = parser.parse_args()
    print(runtime.env_line(), flush=True)
    native, bf16_kernel = runtime.native_precisions("cpu"), kernel_works("quantized_native_bf16")
    rows = {
        name: (precision, quantization) for name, (precision, quantization) in ROWS.items()
        if (precision != "bf16" or "bf16" in native)
        and (quantization is None or quantization.activations != "bf16" or bf16_kernel)
    }  # fmt: skip
    spec = DataSpec(**read_run_record(Path(args.model) / RUN_FILE)["data"])
    warm_up = [source for source, _ in spec.load()[args.split][:4]]
    for precision, quantization in rows.values():  # first uses (probes, oneDNN's primitives) before any row's clock
        Translator.load(args.model, "cpu", precision, quantization).translate(warm_up, num_beams=args.beam)
    print(f"| {args.split} split, beam {args.beam} | seconds | vs float32 | BLEU |\n|---|---|---|---|", flush=True)
    base = None
    for name, (precision, quantization) in rows.items():
        result = evaluate_translation(
            args.model, args.split, None, args.beam, limit=args.limit, progress=False, device="cpu",
            precision=precision, quantization=quantization,
        )  # fmt: skip
        base = base or result["seconds"]
        print(f"| {name} | {result['seconds']:.1f} | {base / result['seconds']:.2f}x | {result['bleu']:.2f} |",
              flush=True)  # fmt: skip
    if args.single:
        one_at_a_time(args.model, args.split, args.single)


SINGLE = {  # name -> (quantization, through the fused step)
    "float32": (None, False),
    "int8, the modules": (Quantization("int8"), False),
    "int8, fused step": (Quantization("int8"), True),
    "int4, fused step": (Quantization("int4"), True),
}


def one_at_a_time(run: str, split: str, count: int) -> None:
    """ms a sentence, translating the first ``count`` sources of ``split`` one at a time, greedy and with 4 beams."""
    spec = DataSpec(**read_run_record(Path(run) / RUN_FILE)["data"])
    texts = [source for source, _ in spec.load()[split][:count]]
    print(f"\n| {len(texts)} sentences one at a time, ms a sentence | greedy | vs float32 | beam 4 | vs float32 |")
    print("|---|---|---|---|---|")
    base, real = None, (fused_step.step, fused_step.takes)
    for name, (quantization, fused) in SINGLE.items():
        translator = Translator.load(run, "cpu", "fp32", quantization)
        if not fused:  # the modules serve every step, and beam search keeps its KVCache
            fused_step.step, fused_step.takes = (lambda *args: None), (lambda model: False)
        try:
            times = []
            for beams in (1, 4):
                translator.translate(texts[:2], num_beams=beams)  # warm-up
                start = time.perf_counter()
                for text in texts:
                    translator.translate([text], num_beams=beams)
                times.append((time.perf_counter() - start) / len(texts) * 1e3)
        finally:
            fused_step.step, fused_step.takes = real
        base = base or times
        print(f"| {name} | {times[0]:.1f} | {base[0] / times[0]:.2f}x | {times[1]:.1f} | {base[1] / times[1]:.2f}x |",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
