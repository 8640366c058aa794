"""``glassformer train lm``: train a GPT language model (the bundled Shakespeare plays by default)."""

from __future__ import annotations

import argparse
import json

from glassformer.cli.options import add_device_arguments
from glassformer.training.lm import PRESETS, train_language_model
from glassformer.training.loop import TrainConfig


def add_lm_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=None, help="a UTF-8 text file (default: Shakespeare's plays, fetched once)")
    parser.add_argument("--out", required=True, help="the run directory")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small", help="model shape (default small)")
    parser.add_argument(
        "--arch",
        choices=["gpt2", "llama"],
        default="gpt2",
        help="gpt2: learned positions, LayerNorm, GELU; llama: rotary embeddings, RMSNorm, SwiGLU (default gpt2)",
    )
    parser.add_argument("--kv-heads", type=int, default=None, help="grouped-query attention: key/value heads")
    parser.add_argument("--tokenizer", choices=["char", "byte_bpe"], default="char")
    parser.add_argument("--vocab-size", type=int, default=2000, help="byte_bpe vocabulary size")
    for field in ("d_model", "num_layers", "num_heads", "d_ff"):
        parser.add_argument(f"--{field.replace('_', '-')}", type=int, default=None, help="overrides the preset")
    parser.add_argument("--block-size", type=int, default=None, help="context length (overrides the preset)")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-steps", type=int, default=2000)
    parser.add_argument("--max-minutes", type=float, default=None, help="stop after this much wall-clock time")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--grad-accum", type=int, default=1)
    add_device_arguments(parser, training=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run_lm(args: argparse.Namespace) -> None:
    fields = dict(PRESETS[args.preset], dropout=args.dropout, attention_dropout=args.dropout)
    for field in ("d_model", "num_layers", "num_heads", "d_ff"):
        if getattr(args, field) is not None:
            fields[field] = getattr(args, field)
    if args.block_size is not None:
        fields["max_seq_length"] = args.block_size
    if args.kv_heads is not None:
        fields["num_kv_heads"] = args.kv_heads
    train = TrainConfig(
        max_steps=args.max_steps,
        max_minutes=args.max_minutes,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        eval_every=args.eval_every,
        grad_accum=args.grad_accum,
        device=args.device,
        precision=args.precision,
        seed=args.seed,
        progress=not args.quiet,
    )
    summary = train_language_model(
        args.out, args.data, args.tokenizer, args.vocab_size, fields, args.batch_size, train, args.resume, args.arch
    )
    print(json.dumps({k: summary[k] for k in ("step", "valid_loss", "valid_ppl", "parameters")}))
    print(f"run directory: {args.out} (generate with: glassformer generate --model {args.out} --prompt ...)")
