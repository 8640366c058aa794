"""Does the training loop keep up with the model? Tokens/s of ``Trainer.fit`` against the bare model step.

Both train the same translation model (``--preset``, default ``small``: d_model 256, 3+3 pre-norm layers, joint
vocabulary) with the same label-smoothed loss and Adam, in the precision ``--precision`` names (default ``auto``,
as ``train translate``), on the same token-capped batches. The bare step is the
minimum: forward, loss, backward, optimizer step on batches collated before the clock starts. The loop adds
what a real run needs: drawing and collating the next batch from the sampler, the learning-rate schedule,
gradient clipping, logging and the progress bar. Rounds alternate in one process.

    python bench/train_loop.py [--steps 30] [--rounds 2] [--preset small] [--max-tokens 4096] [--precision auto]
                               [--data bible|PATH.tsv]

Prints target tokens/s of each and their ratio (the goal: the loop within 10% of the bare step).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from glassformer import Transformer, runtime
from glassformer.data.parallel import ParallelDataset
from glassformer.training.loop import TrainConfig, Trainer
from glassformer.training.optimizers import make_optimizer
from glassformer.training.translation import (
    BOS_ID,
    EOS_ID,
    DataSpec,
    TranslationTask,
    train_tokenizers,
    translation_config,
)


def main() -> None:
    print(runtime.env_line(), flush=True)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per round and contender")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--data", default="bible")
    args = parser.parse_args()
    torch.manual_seed(0)

    splits = DataSpec(args.data).load()
    tokenizer, _ = train_tokenizers(splits["train"], 8000, shared=True)
    train = ParallelDataset(splits["train"], tokenizer, tokenizer, BOS_ID, EOS_ID, 256)
    valid = ParallelDataset(splits["valid"][:64], tokenizer, tokenizer, BOS_ID, EOS_ID, 256, truncate=True)
    model = Transformer(translation_config(args.preset, tokenizer, tokenizer, 256))  # as `train translate` does
    task = TranslationTask(model, (tokenizer, tokenizer), train, valid, args.max_tokens)
    train_config = TrainConfig(
        max_steps=args.steps + 5, lr=1e-3, schedule="noam", warmup_steps=300, optimizer="adam", betas=(0.9, 0.98),
        eps=1e-9, weight_decay=0.0, eval_every=10_000, log_every=5, device="cpu", precision=args.precision,
    )  # fmt: skip
    placement = runtime.place("cpu", args.precision)
    optimizer = make_optimizer(model, train_config)
    generator = torch.Generator()

    def bare(steps: int) -> float:
        batches = [task.train_batch(generator) for _ in range(steps)]  # collated before the clock starts
        model.train()
        start, tokens = time.perf_counter(), 0
        for batch in batches:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(placement.device.type, dtype=placement.dtype, enabled=placement.half):
                loss, n = task.loss(batch)
            loss.backward()
            optimizer.step()
            tokens += n
        return tokens / (time.perf_counter() - start)

    def loop(steps: int) -> float:
        with tempfile.TemporaryDirectory() as run:
            Trainer(task, train_config, Path(run)).fit()
            records = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
        rates = [r["tokens_per_s"] for r in records if "tokens_per_s" in r][1:]  # the first window warms up
        return sum(rates) / len(rates)

    bare(5)  # warm-up
    results: dict[str, list[float]] = {"bare model step": [], "Trainer.fit": []}
    for _ in range(args.rounds):
        results["bare model step"].append(bare(args.steps))
        results["Trainer.fit"].append(loop(args.steps))
    base = max(results["bare model step"])
    print(
        f"\n{args.preset}, {placement.describe()}, max_tokens={args.max_tokens} steps={args.steps} rounds={args.rounds}"
    )
    print(f"{'':20s} {'target tokens/s (best round)':>30s} {'ratio':>8s}")
    for name, rates in results.items():
        print(f"{name:20s} {max(rates):30.0f} {max(rates) / base:8.3f}")


if __name__ == "__main__":
    main()
