"""The timing loop shared by the decoding benchmarks (``generate.py``, ``generate_llama.py``): transformers'
``generate`` and glassformer's on the same ids, alternating, best of ``repeats``; one table row per setting."""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from glassformer import runtime

HEADER = f"{'batch':>5} {'dtype':>9} {'transformers tok/s':>19} {'glassformer tok/s':>18} {'ratio':>6}  notes"


def parse_arguments(description: str) -> argparse.Namespace:
    """The decoding benchmarks' flags; sets the thread count and silences warnings."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    print(runtime.env_line(), flush=True)
    return args


def timed(fn) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def race(hf, ours, ids: torch.Tensor, options: dict, repeats: int) -> tuple[float, float, torch.Tensor, torch.Tensor]:
    """Best seconds of each library over ``repeats`` alternating runs, and their outputs."""
    best_hf = best_ours = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            seconds, hf_out = timed(lambda: hf.generate(ids, do_sample=False, **options))
            best_hf = min(best_hf, seconds)
            seconds, our_out = timed(lambda: ours.generate(ids, **options))
            best_ours = min(best_ours, seconds)
    return best_hf, best_ours, hf_out, our_out


def agreement(reference: torch.Tensor, other: torch.Tensor, prompt_tokens: int) -> int:
    """How many greedy tokens after the prompt are equal in every row before the first difference."""
    same = (reference[:, prompt_tokens:] == other[:, prompt_tokens:]).all(0).long()
    return int(same.cumprod(0).sum())


def row(batch: int, label: str, new_tokens: int, best_hf: float, best_ours: float, notes: str) -> str:
    tokens = batch * new_tokens
    return (
        f"{batch:>5} {label:>9} {tokens / best_hf:>19.1f} {tokens / best_ours:>18.1f} "
        f"{best_hf / best_ours:>5.2f}x  {notes}"
    )
