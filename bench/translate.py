"""Translation speed by precision: ``glassformer evaluate``'s work (beam search over a split of a `train translate`
run, BLEU with sacrebleu) in float32 — the baseline —, bfloat16 where this CPU has it natively, and int8 weights with
float or int8 activations and a float or int8 output layer. Per row: seconds, the speed-up against float32 and BLEU.
Rows run one after another in this process; run it with nothing else running (``make demo``'s run, or any other).

    python bench/translate.py --model runs/de-en-... [--beam 4] [--limit N] [--split test]
"""

from __future__ import annotations

import argparse

from glassformer import runtime
from glassformer.models.quantization import Quantization
from glassformer.training.evaluation import evaluate_translation

ROWS = {  # name -> (precision, quantization)
    "float32": ("fp32", None),
    "bfloat16": ("bf16", None),
    "int8": ("fp32", Quantization("int8")),
    "int8, int8 activations": ("fp32", Quantization("int8", activations="int8")),
    "int8, int8 activations and output layer": ("fp32", Quantization("int8", embeddings="int8", activations="int8")),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a `train translate` run directory")
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--limit", type=int, default=None, help="only the first N pairs")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    print(runtime.env_line(), flush=True)
    native = runtime.native_precisions("cpu")
    rows = {name: row for name, row in ROWS.items() if row[0] != "bf16" or "bf16" in native}
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


if __name__ == "__main__":
    main()
