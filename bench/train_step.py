"""Training-step throughput: glassformer's ``Transformer`` against ``torch.nn.Transformer``.

All get the paper's base shape (d_model 512, 6+6 layers, 8 heads, d_ff 2048), vocab 8000, embeddings scaled
by sqrt(d_model), sinusoidal positions, an output layer, dropout 0.1, Adam (fused, the same for all), and the
same batches: 32 pairs of 8 to 32 tokens with random lengths (right padding). The baseline gets the same masks
(source/target key padding, causal). Steps alternate between the models in one process, so all see the same
machine state.

Two glassformer rows: "torch dropout" also drops attention weights and feed-forward activations, exactly
like torch.nn.Transformer (the like-for-like comparison); "paper dropout" drops only sublayer outputs and
embedding sums, as the paper does and as glassformer's config defaults.

    python bench/train_step.py [--steps 6] [--warmup 2] [--batch 32] [--seq 32] [--threads N]

Prints target tokens/s (real, non-pad target tokens) for each model and the ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from glassformer import Transformer, TransformerConfig, runtime
from glassformer.nn import PositionalEncoding

PAD = 0


class TorchBaseline(nn.Module):
    """``torch.nn.Transformer`` with the embeddings, positions and output layer it leaves to the user."""

    def __init__(self, vocab: int, d_model: int, layers: int, heads: int, d_ff: int, dropout: float):
        super().__init__()
        self.d_model = d_model
        self.src_embed = nn.Embedding(vocab, d_model, padding_idx=PAD)
        self.tgt_embed = nn.Embedding(vocab, d_model, padding_idx=PAD)
        self.positions = PositionalEncoding(d_model, 512)
        self.dropout = nn.Dropout(dropout)
        self.transformer = nn.Transformer(d_model, heads, layers, layers, d_ff, dropout, batch_first=True)
        self.out = nn.Linear(d_model, vocab)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        scale = math.sqrt(self.d_model)
        s = self.dropout(self.positions(self.src_embed(src) * scale))
        t = self.dropout(self.positions(self.tgt_embed(tgt) * scale))
        causal = nn.Transformer.generate_square_subsequent_mask(tgt.size(1), dtype=torch.bool)
        src_pad, tgt_pad = src == PAD, tgt == PAD  # torch's convention: True = ignore
        h = self.transformer(
            s,
            t,
            tgt_mask=causal,
            src_key_padding_mask=src_pad,
            tgt_key_padding_mask=tgt_pad,
            memory_key_padding_mask=src_pad,
            tgt_is_causal=True,
        )
        return self.out(h)


def make_batch(batch: int, seq: int, vocab: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    def padded() -> torch.Tensor:
        ids = torch.randint(1, vocab, (batch, seq), generator=generator)
        lengths = torch.randint(seq // 4, seq + 1, (batch,), generator=generator)
        ids[torch.arange(seq)[None, :] >= lengths[:, None]] = PAD
        return ids

    return padded(), padded()


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, src: torch.Tensor, tgt: torch.Tensor) -> float:
    optimizer.zero_grad(set_to_none=True)
    logits = model(src, tgt[:, :-1])
    loss = F.cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten(), ignore_index=PAD)
    loss.backward()
    optimizer.step()
    return loss.item()


def main() -> None:
    print(runtime.env_line(), flush=True)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    config = TransformerConfig(
        src_vocab_size=args.vocab,
        tgt_vocab_size=args.vocab,
        d_model=args.d_model,
        num_layers=args.layers,
        num_heads=8,
        d_ff=4 * args.d_model,
        dropout=0.1,
        pad_token_id=PAD,
    )
    torch_dropout = dataclasses.replace(config, attention_dropout=0.1, activation_dropout=0.1)
    models = {
        "torch.nn.Transformer": TorchBaseline(args.vocab, args.d_model, args.layers, 8, 4 * args.d_model, 0.1),
        "glassformer (torch dropout)": Transformer(torch_dropout),
        "glassformer (paper dropout)": Transformer(config),
    }
    optimizers = {
        name: torch.optim.Adam(m.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9, fused=True)
        for name, m in models.items()
    }
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    generator = torch.Generator().manual_seed(0)
    batches = [make_batch(args.batch, args.seq + 1, args.vocab, generator) for _ in range(args.warmup + args.steps)]

    seconds = dict.fromkeys(models, 0.0)
    tokens = 0
    for i, (src, tgt) in enumerate(batches):
        timed = i >= args.warmup
        if timed:
            tokens += int((tgt[:, 1:] != PAD).sum())
        for name, model in models.items():  # alternate: one step of each per batch
            model.train()
            start = time.perf_counter()
            train_step(model, optimizers[name], src, tgt)
            if timed:
                seconds[name] += time.perf_counter() - start

    base = tokens / seconds["torch.nn.Transformer"]
    print(
        f"threads={torch.get_num_threads()} batch={args.batch} seq<={args.seq} vocab={args.vocab} "
        f"d_model={args.d_model} layers={args.layers}+{args.layers} steps={args.steps}"
    )
    print(f"{'model':<28} {'params':>12} {'tgt tokens/s':>13} {'ratio':>7}")
    for name in models:
        rate = tokens / seconds[name]
        print(f"{name:<28} {params[name]:>12,} {rate:>13.1f} {rate / base:>6.2f}x")


if __name__ == "__main__":
    main()
