"""``glassformer train translate``, ``glassformer translate`` and ``glassformer evaluate``."""

from __future__ import annotations

import argparse
import json
import sys

from glassformer.cli.options import add_device_arguments, report_placement
from glassformer.training.translation import AUTO_MIN_STEPS, PRESETS

MODEL_FIELDS = ("d_model", "num_layers", "num_heads", "d_ff")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="bible", help="'bible', a TSV of source<TAB>target, or 'src.txt,tgt.txt'")
    parser.add_argument("--source", default="e", help="bible: source translation code (default e, German)")
    parser.add_argument("--target", default="4", help="bible: target translation code (default 4, English WEB)")
    parser.add_argument("--out", required=True, help="the run directory")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    parser.add_argument(
        "--preset",
        choices=["auto", *PRESETS],
        default="auto",
        help="model shape; auto (default): with --max-minutes, the largest recipe that this machine trains for "
        f"{AUTO_MIN_STEPS}+ steps in that time, measured before training (else small)",
    )
    for field in MODEL_FIELDS:
        parser.add_argument(f"--{field.replace('_', '-')}", type=int, default=None, help="overrides the preset")
    parser.add_argument("--dropout", type=float, default=None, help="overrides the preset (0.1)")
    parser.add_argument("--vocab-size", type=int, default=8000, help="BPE vocabulary size (default 8000)")
    parser.add_argument("--separate-vocab", action="store_true", help="one vocabulary per language, not joint")
    parser.add_argument("--max-length", type=int, default=256, help="longest sentence in tokens (default 256)")
    parser.add_argument(
        "--max-tokens", type=int, default=None, help="padded tokens per batch (default 4096, or the auto recipe's)"
    )
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--max-steps", type=int, default=100_000)
    parser.add_argument("--max-minutes", type=float, default=None, help="stop after this much wall-clock time")
    parser.add_argument("--optimizer", choices=["adam", "adamw"], default="adam")
    parser.add_argument("--schedule", choices=["noam", "cosine", "constant"], default="noam")
    parser.add_argument("--lr", type=float, default=1.5e-3, help="peak learning rate (default 1.5e-3)")
    parser.add_argument("--warmup-steps", type=int, default=300)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--grad-clip", type=float, default=1.0)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--eval-every", type=int, default=500, help="validation every N steps")
    parser.add_argument("--log-every", type=int, default=50, help="a metrics line every N steps")
    add_device_arguments(parser, training=True)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run_train(args: argparse.Namespace) -> None:
    from glassformer.training.loop import TrainConfig
    from glassformer.training.translation import DataSpec, train_translation

    fields = {f: getattr(args, f) for f in MODEL_FIELDS if getattr(args, f) is not None}
    if args.dropout is not None:
        fields["dropout"] = args.dropout
    train = TrainConfig(
        max_steps=args.max_steps,
        max_minutes=args.max_minutes,
        lr=args.lr,
        schedule=args.schedule,
        warmup_steps=args.warmup_steps,
        optimizer=args.optimizer,
        betas=(0.9, 0.98),
        eps=1e-9,
        weight_decay=args.weight_decay,
        grad_clip=args.grad_clip or None,
        grad_accum=args.grad_accum,
        eval_every=args.eval_every,
        log_every=args.log_every,
        seed=args.seed,
        device=args.device,
        precision=args.precision,
        compile=args.compile,
        progress=not args.quiet,
    )
    summary = train_translation(
        args.out,
        DataSpec(args.data, args.source, args.target),
        args.preset,
        fields,
        vocab_size=args.vocab_size,
        shared_vocab=not args.separate_vocab,
        max_length=args.max_length,
        max_tokens=args.max_tokens,
        label_smoothing=args.label_smoothing,
        train=train,
        resume=args.resume,
        report=lambda line: print(line, file=sys.stderr),
    )
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}))
    print(f"run directory: {args.out} (evaluate with: glassformer evaluate --model {args.out})")


def add_translate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a `train translate` run directory (or a model directory)")
    parser.add_argument("texts", nargs="*", help="sentences to translate (default: one per line on stdin)")
    parser.add_argument("--beam", type=int, default=4, help="beam size; 1 = greedy (default 4)")
    parser.add_argument("--length-penalty", type=float, default=1.0)
    add_device_arguments(parser)


def run_translate(args: argparse.Namespace) -> None:
    from glassformer.generation.translator import Translator

    placement = report_placement(args)
    translator = Translator.load(args.model, placement.device, placement.precision)
    texts = args.texts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        raise ValueError("nothing to translate; pass sentences as arguments or lines on stdin")
    for translation in translator.translate(texts, num_beams=args.beam, length_penalty=args.length_penalty):
        print(translation)


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a `train translate` or `train classify` run directory")
    parser.add_argument("--split", default="test", choices=["train", "valid", "test"], help="default test")
    parser.add_argument("--data", default=None, help="score on this TSV (or 'src.txt,tgt.txt') instead")
    parser.add_argument("--beam", type=int, default=4, help="beam size; 1 = greedy (default 4)")
    parser.add_argument("--length-penalty", type=float, default=1.0)
    parser.add_argument("--limit", type=int, default=None, help="only the first N pairs")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device_arguments(parser)


def run_evaluate(args: argparse.Namespace) -> None:
    from glassformer.training.evaluation import evaluate_translation

    placement = report_placement(args)
    result = evaluate_translation(
        args.model, args.split, args.data, args.beam, args.length_penalty, args.limit, progress=not args.quiet,
        device=placement.device, precision=placement.precision,
    )  # fmt: skip
    print(
        f"{result['split']}: {result['pairs']} pairs, beam {result['beam']}: "
        f"BLEU {result['bleu']:.2f}  chrF {result['chrf']:.2f}  ({result['seconds']} s)"
    )
    print(result["bleu_detail"])
    if "outputs" in result:
        print(f"translations: {result['outputs']}")
