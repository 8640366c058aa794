"""Is ``--precision auto`` the fast choice on this machine? Training tokens/s of the translation model with the
precision ``auto`` picks, against float32 and bfloat16 (and float16) forced.

The ``small`` preset (d_model 256, 3+3 pre-norm layers, joint 8k vocabulary) on token-capped batches of the Bible
corpus (or ``--data`` TSV), exactly as ``train translate`` trains it: ``Trainer`` steps with autocast, the
label-smoothed loss, Adam, clipping. Rounds alternate between the precisions; the best round counts. On a CPU
without native bfloat16 the forced bf16 row is very slow (~100x on AVX2-only CPUs): ``--skip-emulated`` leaves
out precisions the hardware only emulates.

    python bench/precision.py [--steps 6] [--rounds 2] [--preset small] [--max-tokens 4096] [--skip-emulated]

The goal: auto within 5% of the fastest row.
"""

from __future__ import annotations

import argparse
import warnings

import torch

from glassformer import Transformer, runtime
from glassformer.data.parallel import ParallelDataset
from glassformer.training.loop import TrainConfig, Trainer
from glassformer.training.translation import (
    BOS_ID,
    EOS_ID,
    DataSpec,
    TranslationTask,
    train_tokenizers,
    translation_config,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per round and precision")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--data", default="bible")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--skip-emulated", action="store_true", help="leave out precisions that are not native")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    print(runtime.env_line(args.device), flush=True)

    splits = DataSpec(args.data).load()
    tokenizer, _ = train_tokenizers(splits["train"], 8000, shared=True)
    train = ParallelDataset(splits["train"], tokenizer, tokenizer, BOS_ID, EOS_ID, 128)
    valid = ParallelDataset(splits["valid"][:64], tokenizer, tokenizer, BOS_ID, EOS_ID, 128, truncate=True)
    device = runtime.resolve_device(args.device)
    native = runtime.native_precisions(device.type, device.index)
    auto = runtime.place(device, "auto").precision
    precisions = ["auto", "fp32", "bf16"] + (["fp16"] if device.type != "cpu" else [])
    if args.skip_emulated:
        precisions = [p for p in precisions if p == "auto" or p in native]

    def measure(precision: str, steps: int) -> float:
        torch.manual_seed(0)
        model = Transformer(translation_config(args.preset, tokenizer, tokenizer, 128))
        task = TranslationTask(model, (tokenizer, tokenizer), train, valid, args.max_tokens)
        config = TrainConfig(
            lr=1e-3, optimizer="adam", betas=(0.9, 0.98), eps=1e-9, weight_decay=0.0, device=args.device,
            precision=precision, progress=False,
        )  # fmt: skip
        return Trainer(task, config, ".").measure_steps(steps)[1]

    measure("fp32", 1)  # the process's one-time costs (allocator, kernel caches) before any row is timed
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for precision in precisions:
            tokens_per_s = measure(precision, args.steps)
            best[precision] = max(best.get(precision, 0.0), tokens_per_s)
            print(f"  {precision}: {tokens_per_s:,.0f} target tokens/s", flush=True)

    fastest = max(best[p] for p in precisions if p != "auto")
    print(f"\ntranslation training, preset {args.preset}, {args.max_tokens} tokens/batch, best of {args.rounds} rounds")
    print(f"{'precision':<22} {'target tokens/s':>16} {'vs fastest forced':>18}")
    for precision in precisions:
        label = (
            f"auto (= {auto})" if precision == "auto" else precision + ("" if precision in native else " (emulated)")
        )
        print(f"{label:<22} {best[precision]:>16,.0f} {best[precision] / fastest:>17.2f}x")


if __name__ == "__main__":
    main()
