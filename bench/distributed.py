"""What training on several processes costs on this machine: 1 process × T threads against T processes × 1 thread.

The language-model preset of ``train lm`` (``--preset small``: d_model 128, 4 layers, block 128, char vocabulary of
the bundled Shakespeare), the global batch of ``--batch-size`` windows, the real ``Trainer`` step (forward, loss,
backward, clipping, AdamW). With T processes (torchrun, gloo, DDP) each computes on its 1/T share; what the engine
adds is the gradients' all-reduce (every parameter's float32 gradient, once per step) and the two tiny all-reduces
of the loop (token count and loss). Measured in the same run:

    step       the real step, gradients reduced across processes
    compute    the same step inside DDP's ``no_sync`` (no gradient all-reduce): forward + backward + update
    comm       step - compute: the all-reduce time that backward does not hide
    all-reduce a bare ``all_reduce`` of the gradients' bytes, timed alone

    python bench/distributed.py [--processes 2] [--steps 30] [--rounds 2] [--batch-size 16] [--preset small]

Goal (2 cores): 2 processes × 1 thread reach >= 0.9× the tokens/s of 1 process × 2 threads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch


def build_trainer(preset: str, batch_size: int, run_dir: Path):
    from glassformer import GPT, GPTConfig, Tokenizer
    from glassformer.training.lm import PRESETS, LanguageModelingTask, lm_train_config, read_corpus
    from glassformer.training.loop import Trainer

    train_text, valid_text = read_corpus(None)
    train_text = train_text[:2_000_000]
    tokenizer = Tokenizer.train([train_text], kind="char")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, **PRESETS[preset]))
    ids = torch.tensor(tokenizer.encode(train_text), dtype=torch.long)
    task = LanguageModelingTask(model, tokenizer, ids, ids[:10_000], batch_size)
    config = lm_train_config(lr=1e-4, warmup_steps=1, device="cpu", precision="fp32", progress=False)
    return Trainer(task, config, run_dir)


def measure(args: argparse.Namespace) -> dict:
    """Seconds per step with and without the gradients' all-reduce, tokens per step, and a bare all-reduce."""
    import torch.distributed as dist

    from glassformer.training import distributed

    world = distributed.current()
    trainer = build_trainer(args.preset, args.batch_size, Path(tempfile.mkdtemp()))
    trainer.task.model.train()
    for group in trainer.optimizer.param_groups:
        group["lr"] = 1e-5
    gradient_bytes = sum(p.numel() * p.element_size() for p in trainer.task.model.parameters())

    def timed(no_sync: bool) -> tuple[float, int]:
        world.barrier()
        start, tokens = time.perf_counter(), 0
        for _ in range(args.steps):
            with trainer.wrapped.no_sync() if no_sync and world.distributed else nullcontext():
                tokens += trainer._train_step()[1]
        world.barrier()
        return (time.perf_counter() - start) / args.steps, tokens // args.steps

    timed(False)  # warm-up: allocations, DDP's buckets
    steps, computes, reduces = [], [], []
    for _ in range(args.rounds):
        step, tokens = timed(False)
        compute, _ = timed(True)
        steps.append(step)
        computes.append(compute)
        if world.distributed:
            flat = torch.zeros(gradient_bytes // 4)
            dist.all_reduce(flat)
            start = time.perf_counter()
            for _ in range(5):
                dist.all_reduce(flat)
            reduces.append((time.perf_counter() - start) / 5)
    step, compute = min(steps), min(computes)
    return {
        "processes": world.size,
        "threads": torch.get_num_threads(),
        "step_s": step,
        "compute_s": compute,
        "all_reduce_s": min(reduces) if reduces else 0.0,
        "tokens_per_step": tokens,
        "all_reduce_bytes": gradient_bytes if world.distributed else 0,
        "parameters": sum(p.numel() for p in trainer.task.model.parameters()),
    }


def worker(args: argparse.Namespace) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    result = measure(args)
    if dist.get_rank() == 0:
        Path(args.worker).write_text(json.dumps(result))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # set when torchrun runs this file
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    from glassformer import runtime

    print(runtime.env_line(), flush=True)
    torch.set_num_threads(args.processes)
    single = measure(args)
    out = Path(tempfile.mkdtemp()) / "result.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.processes),
               __file__, "--worker", str(out), "--steps", str(args.steps), "--rounds", str(args.rounds),
               "--batch-size", str(args.batch_size), "--preset", args.preset]  # fmt: skip
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    several = json.loads(out.read_text())
    shape = f"{single['parameters']:,} parameters, global batch {args.batch_size} windows"
    print(f"\nLM preset {args.preset}: {shape} ({single['tokens_per_step']:,} tokens per step), "
          f"best of {args.rounds} rounds × {args.steps} steps\n")  # fmt: skip
    print("| processes × threads | step ms | compute ms | comm ms (not hidden) | bare all-reduce ms "
          "| all-reduce MB/step | tokens/s | vs 1 process |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    base = single["tokens_per_step"] / single["step_s"]
    for r in (single, several):
        rate = r["tokens_per_step"] / r["step_s"]
        comm = max(r["step_s"] - r["compute_s"], 0.0)
        print(f"| {r['processes']} × {r['threads']} | {1e3 * r['step_s']:.1f} | {1e3 * r['compute_s']:.1f} "
              f"| {1e3 * comm:.1f} | {1e3 * r['all_reduce_s']:.1f} | {r['all_reduce_bytes'] / 2**20:.2f} "
              f"| {rate:,.0f} | {rate / base:.2f}x |")  # fmt: skip
    ratio = (several["tokens_per_step"] / several["step_s"]) / base
    print(f"\ngoal: {args.processes} × 1 thread >= 0.9x of 1 × {args.processes} threads: "
          f"{'met' if ratio >= 0.9 else 'NOT met'} ({ratio:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
