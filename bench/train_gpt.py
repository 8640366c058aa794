"""GPT training-step throughput: glassformer's GPT against transformers' GPT2LMHeadModel.

nanoGPT's shakespeare_char shape: 6 layers, 6 heads, 384 wide, block 256, batch 12, vocab 65, dropout 0.2.
Both models get the same random batches, AdamW (fused, the same for both), forward + backward + step, and
alternate step by step in one process.

    python bench/train_gpt.py [--steps 8] [--warmup 2]

Prints tokens/s (batch x block per step) for each and the ratio.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
import torch.nn.functional as F

from glassformer import runtime
from glassformer.models.gpt import GPT, GPTConfig


def main() -> None:
    print(runtime.env_line(), flush=True)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--block", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    vocab, dropout = 65, 0.2
    hf_config = transformers.GPT2Config(
        vocab_size=vocab,
        n_positions=args.block,
        n_embd=384,
        n_layer=6,
        n_head=6,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
    )
    hf_config._attn_implementation = "sdpa"
    ours_config = GPTConfig(
        vocab_size=vocab,
        max_seq_length=args.block,
        d_model=384,
        num_layers=6,
        num_heads=6,
        d_ff=1536,
        dropout=dropout,
        attention_dropout=dropout,
    )
    models = {
        "transformers GPT2LMHeadModel": transformers.GPT2LMHeadModel(hf_config),
        "glassformer GPT": GPT(ours_config),
    }
    logits_of = {"transformers GPT2LMHeadModel": lambda m, x: m(x).logits, "glassformer GPT": lambda m, x: m(x)}
    optimizers = {n: torch.optim.AdamW(m.parameters(), lr=1e-3, fused=True) for n, m in models.items()}
    generator = torch.Generator().manual_seed(0)
    batches = [
        torch.randint(0, vocab, (args.batch, args.block + 1), generator=generator)
        for _ in range(args.warmup + args.steps)
    ]

    seconds = dict.fromkeys(models, 0.0)
    for i, batch in enumerate(batches):
        x, y = batch[:, :-1], batch[:, 1:]
        for name, model in models.items():
            model.train()
            start = time.perf_counter()
            optimizers[name].zero_grad(set_to_none=True)
            loss = F.cross_entropy(logits_of[name](model, x).flatten(0, 1), y.flatten())
            loss.backward()
            optimizers[name].step()
            if i >= args.warmup:
                seconds[name] += time.perf_counter() - start

    tokens = args.steps * args.batch * args.block
    base = tokens / seconds["transformers GPT2LMHeadModel"]
    print(f"threads={torch.get_num_threads()} batch={args.batch} block={args.block} 6x384, 6 heads, steps={args.steps}")
    print(f"{'model':<30} {'params':>11} {'tokens/s':>9} {'ratio':>6}")
    for name, model in models.items():
        rate = tokens / seconds[name]
        params = sum(p.numel() for p in model.parameters())
        print(f"{name:<30} {params:>11,} {rate:>9.1f} {rate / base:>5.2f}x")


if __name__ == "__main__":
    main()
