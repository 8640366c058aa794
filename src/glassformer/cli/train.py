"""``glassformer train lm | translate | classify``: one subcommand per task, each flag's default the library's."""

from __future__ import annotations

import argparse
import json
import os
import sys

from glassformer.cli.options import add_device_arguments, default_of
from glassformer.data.sentiment import DOMAINS
from glassformer.options import check_options
from glassformer.training import classification, distributed, launch, lm, recipes, translation
from glassformer.training.config import OPTIMIZERS
from glassformer.training.loop import TrainConfig
from glassformer.training.schedules import SCHEDULES

MODEL_FIELDS = ("d_model", "num_layers", "num_heads", "d_ff")
MAX_MINUTES_HELP = (
    "stop after this much wall-clock time, counted over the whole run (a resumed run finishes its minutes); a "
    "decaying learning-rate schedule ends with them"
)


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("train", help="train a model", description="Train a model.")
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    lm_parser = kinds.add_parser("lm", help="a GPT language model on text", description="Train a GPT language model.")
    add_lm_arguments(lm_parser)
    lm_parser.set_defaults(func=run_lm)
    translate = kinds.add_parser(
        "translate",
        help="an encoder-decoder Transformer on sentence pairs",
        description="Train the encoder-decoder Transformer to translate (German → English Bible by default).",
    )
    add_translate_arguments(translate)
    translate.set_defaults(func=run_translate)
    classify = kinds.add_parser(
        "classify",
        help="fine-tune a BERT text classifier (sentiment by default)",
        description="Fine-tune BertForSequenceClassification from pretrained weights (all-MiniLM-L6-v2 by default) "
        "on labelled texts (the VADER paper's movie-review sentences by default).",
    )
    add_classify_arguments(classify)
    classify.set_defaults(func=run_classify)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """What every training command takes: the run directory, resuming, the seed, the machine, processes, quiet."""
    parser.add_argument("--out", required=True, help="the run directory")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    parser.add_argument("--seed", type=int, default=0)
    add_device_arguments(parser, training=True)
    parser.add_argument(
        "--nproc-per-node",
        type=int,
        default=1,
        help="train on N processes of this machine (torchrun; one per GPU, or N CPU processes); the batch size "
        "stays the global one. Several machines: run torchrun -m glassformer train ... on each (README)",
    )
    parser.add_argument(
        "--parallel",
        choices=list(distributed.PARALLEL),
        default=TrainConfig.parallel,
        help="with several processes: ddp (default; each holds the whole model) or fsdp (parameters, gradients and "
        "optimizer state sharded over the processes, FSDP2)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def relaunched(args: argparse.Namespace) -> int | None:
    """``--nproc-per-node N`` (N > 1) outside torchrun: run this same command under torchrun on N processes and
    return its exit status; None when this process is to train (one process, or a torchrun worker)."""
    check_options(nproc_per_node=args.nproc_per_node)
    if args.nproc_per_node == 1 or distributed.launched_by_torchrun():
        return None
    if getattr(args, "batch_size", None) and not args.resume:  # refused here, before N processes start to say it
        distributed.check_divisible("batch_size", args.batch_size, distributed.World(0, args.nproc_per_node))
    argv, skip = [], False
    for token in args.argv:  # the command line without --nproc-per-node (the workers must not launch again)
        if skip or token.startswith("--nproc"):
            skip = not skip and "=" not in token
            continue
        argv.append(token)
    return launch.run_torchrun(args.nproc_per_node, argv)


def add_recipe_argument(parser: argparse.ArgumentParser, paper: str) -> None:
    parser.add_argument(
        "--recipe",
        choices=list(recipes.RECIPES),
        default="paper",
        help=f"paper (default): {paper}; fast: QK-norm, ReLU², zero-initialized projections, Muon and a warm-down "
        "schedule at a higher peak lr (README: what each change buys); the flags below override either",
    )


def recipe_overrides(args: argparse.Namespace, names: tuple[str, ...]) -> dict:
    """The training flags given on the command line (their default None means: the recipe's value)."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def add_shape_arguments(parser: argparse.ArgumentParser) -> None:
    for field in MODEL_FIELDS:
        parser.add_argument(f"--{field.replace('_', '-')}", type=int, default=None, help="overrides the preset")


def shape_fields(args: argparse.Namespace) -> dict:
    return {f: getattr(args, f) for f in MODEL_FIELDS if getattr(args, f) is not None}


def print_summary(summary: dict, keys: tuple[str, ...] | None, out: str, next_step: str) -> None:
    if int(os.environ.get("RANK", 0)) > 0:
        return  # with several processes, rank 0 reports
    shown = {k: summary[k] for k in keys} if keys else summary
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in shown.items()}))
    print(f"run directory: {out} ({next_step})")


# --- train lm -------------------------------------------------------------------------------------------------


def add_lm_arguments(parser: argparse.ArgumentParser) -> None:
    train, defaults = lm.lm_train_config(), lm.train_language_model
    parser.add_argument("--data", default=None, help="a UTF-8 text file (default: Shakespeare's plays, fetched once)")
    parser.add_argument("--preset", choices=sorted(lm.PRESETS), default="small", help="model shape (default small)")
    parser.add_argument(
        "--arch",
        choices=["gpt2", "llama"],
        default=default_of(defaults, "architecture"),
        help="gpt2: learned positions, LayerNorm, GELU; llama: rotary embeddings, RMSNorm, SwiGLU (default gpt2)",
    )
    parser.add_argument("--kv-heads", type=int, default=None, help="grouped-query attention: key/value heads")
    parser.add_argument("--tokenizer", choices=["char", "byte_bpe"], default=default_of(defaults, "tokenizer_kind"))
    parser.add_argument("--vocab-size", type=int, default=default_of(defaults, "vocab_size"), help="byte_bpe size")
    add_shape_arguments(parser)
    parser.add_argument("--block-size", type=int, default=None, help="context length (overrides the preset)")
    parser.add_argument("--dropout", type=float, default=None, help="overrides the model's (0.1; llama 0)")
    parser.add_argument("--batch-size", type=int, default=default_of(defaults, "batch_size"))
    parser.add_argument("--max-steps", type=int, default=train.max_steps)
    parser.add_argument("--max-minutes", type=float, default=None, help=MAX_MINUTES_HELP)
    add_recipe_argument(parser, "nanoGPT's AdamW with warm-up and cosine decay")
    parser.add_argument("--lr", type=float, default=None, help=f"peak learning rate (paper {train.lr:g})")
    parser.add_argument("--warmup-steps", type=int, default=None, help=f"(paper {train.warmup_steps})")
    parser.add_argument("--eval-every", type=int, default=train.eval_every)
    parser.add_argument("--grad-accum", type=int, default=train.grad_accum)
    add_run_arguments(parser)


def run_lm(args: argparse.Namespace) -> int | None:
    if (status := relaunched(args)) is not None:
        return status
    fields = {**lm.PRESETS[args.preset], **shape_fields(args)}
    if args.dropout is not None:
        fields.update(dropout=args.dropout, attention_dropout=args.dropout)
    if args.block_size is not None:
        fields["max_seq_length"] = args.block_size
    if args.kv_heads is not None:
        fields["num_kv_heads"] = args.kv_heads
    train = lm.lm_train_config(
        args.recipe, max_steps=args.max_steps, max_minutes=args.max_minutes, eval_every=args.eval_every,
        grad_accum=args.grad_accum, device=args.device, precision=args.precision, seed=args.seed,
        progress=not args.quiet, parallel=args.parallel, **recipe_overrides(args, ("lr", "warmup_steps")),
    )  # fmt: skip
    summary = lm.train_language_model(
        args.out,
        args.data,
        args.tokenizer,
        args.vocab_size,
        fields,
        args.batch_size,
        train,
        args.resume,
        args.arch,
        args.recipe,
    )
    print_summary(summary, ("step", "valid_loss", "valid_ppl", "parameters"), args.out,
                  f"generate with: glassformer generate --model {args.out} --prompt ...")  # fmt: skip


# --- train translate ------------------------------------------------------------------------------------------


def add_translate_arguments(parser: argparse.ArgumentParser) -> None:
    train, defaults = translation.translation_train_config(), translation.train_translation
    parser.add_argument("--data", default="bible", help="'bible', a TSV of source<TAB>target, or 'src.txt,tgt.txt'")
    parser.add_argument("--source", default="e", help="bible: source translation code (default e, German)")
    parser.add_argument("--target", default="4", help="bible: target translation code (default 4, English WEB)")
    parser.add_argument(
        "--preset",
        choices=["auto", *translation.PRESETS],
        default="auto",
        help="model shape; auto (default): with --max-minutes, the largest shape that this machine trains for "
        f"{translation.AUTO_MIN_STEPS}+ steps in that time, measured before training (else small)",
    )
    parser.add_argument(
        "--arch",
        choices=list(translation.ARCHITECTURES),
        default=default_of(defaults, "architecture"),
        help="paper (default): LayerNorm, sinusoidal positions, ReLU; t5: relative position bias, RMSNorm, gated "
        "GELU; llama: rotary positions, RMSNorm, SwiGLU",
    )
    add_shape_arguments(parser)
    parser.add_argument("--dropout", type=float, default=None, help="overrides the preset's")
    parser.add_argument("--vocab-size", type=int, default=default_of(defaults, "vocab_size"), help="BPE vocabulary")
    parser.add_argument("--separate-vocab", action="store_true", help="one vocabulary per language, not joint")
    parser.add_argument("--max-length", type=int, default=default_of(defaults, "max_length"), help="tokens/sentence")
    parser.add_argument(
        "--max-tokens", type=int, default=None, help="padded tokens per batch (default 4096, or the auto recipe's)"
    )
    parser.add_argument("--label-smoothing", type=float, default=default_of(defaults, "label_smoothing"))
    parser.add_argument("--max-steps", type=int, default=train.max_steps)
    parser.add_argument("--max-minutes", type=float, default=None, help=MAX_MINUTES_HELP)
    add_recipe_argument(parser, "the paper's Adam and warm-up schedule")
    parser.add_argument("--optimizer", choices=list(OPTIMIZERS), default=None, help=f"(paper {train.optimizer})")
    parser.add_argument("--schedule", choices=list(SCHEDULES), default=None, help=f"(paper {train.schedule})")
    parser.add_argument("--lr", type=float, default=None, help=f"peak learning rate (paper {train.lr:g})")
    parser.add_argument("--warmup-steps", type=int, default=None, help=f"(paper {train.warmup_steps})")
    parser.add_argument("--weight-decay", type=float, default=None, help=f"(paper {train.weight_decay:g})")
    parser.add_argument("--grad-clip", type=float, default=train.grad_clip, help="0 = no clipping")
    parser.add_argument("--grad-accum", type=int, default=train.grad_accum)
    parser.add_argument("--eval-every", type=int, default=train.eval_every, help="validation every N steps")
    parser.add_argument("--log-every", type=int, default=train.log_every, help="a metrics line every N steps")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    add_run_arguments(parser)


def run_translate(args: argparse.Namespace) -> int | None:
    if (status := relaunched(args)) is not None:
        return status
    fields = shape_fields(args)
    if args.dropout is not None:
        fields["dropout"] = args.dropout
    overrides = recipe_overrides(args, ("lr", "schedule", "warmup_steps", "optimizer", "weight_decay"))
    train = translation.translation_train_config(
        args.recipe, max_steps=args.max_steps, max_minutes=args.max_minutes, **overrides,
        grad_clip=args.grad_clip or None, grad_accum=args.grad_accum, eval_every=args.eval_every,
        log_every=args.log_every, seed=args.seed, device=args.device, precision=args.precision,
        compile=args.compile, progress=not args.quiet, parallel=args.parallel,
    )  # fmt: skip
    summary = translation.train_translation(
        args.out, translation.DataSpec(args.data, args.source, args.target), args.preset, fields,
        vocab_size=args.vocab_size, shared_vocab=not args.separate_vocab, max_length=args.max_length,
        max_tokens=args.max_tokens, label_smoothing=args.label_smoothing, train=train, resume=args.resume,
        report=lambda line: print(line, file=sys.stderr), architecture=args.arch, recipe=args.recipe,
    )  # fmt: skip
    print_summary(summary, None, args.out, f"evaluate with: glassformer evaluate --model {args.out}")


# --- train classify -------------------------------------------------------------------------------------------


def add_classify_arguments(parser: argparse.ArgumentParser) -> None:
    train, defaults = classification.classification_train_config(), classification.train_classifier
    parser.add_argument("--data", default="sentiment", help="'sentiment' or a TSV of label<TAB>text lines")
    parser.add_argument("--domain", default="movies", choices=list(DOMAINS), help="sentiment: which sentences")
    parser.add_argument("--init", default=default_of(defaults, "init"), help="pretrained encoder: minilm or a dir")
    parser.add_argument("--pooling", choices=["mean", "pooler"], default=default_of(defaults, "pooling"))
    parser.add_argument("--num-labels", type=int, default=None, help="for integer labels: how many classes")
    parser.add_argument("--epochs", type=float, default=default_of(defaults, "epochs"))
    parser.add_argument("--max-minutes", type=float, default=train.max_minutes, help=MAX_MINUTES_HELP)
    parser.add_argument("--batch-size", type=int, default=default_of(defaults, "batch_size"))
    parser.add_argument("--max-length", type=int, default=default_of(defaults, "max_length"), help="tokens per text")
    parser.add_argument("--lr", type=float, default=train.lr, help="peak learning rate")
    parser.add_argument("--warmup", type=float, default=default_of(defaults, "warmup"), help="fraction of the steps")
    parser.add_argument("--weight-decay", type=float, default=train.weight_decay)
    parser.add_argument("--dropout", type=float, default=default_of(defaults, "dropout"))
    parser.add_argument(
        "--layer-decay", type=float, default=default_of(defaults, "layer_decay"), help="layer-wise lr decay (1 = none)"
    )
    parser.add_argument("--patience", type=int, default=train.patience, help="evaluations without a better accuracy")
    parser.add_argument("--evals-per-epoch", type=int, default=default_of(defaults, "evals_per_epoch"))
    add_run_arguments(parser)


def run_classify(args: argparse.Namespace) -> int | None:
    if (status := relaunched(args)) is not None:
        return status
    train = classification.classification_train_config(
        max_minutes=args.max_minutes, lr=args.lr, weight_decay=args.weight_decay, patience=args.patience,
        device=args.device, precision=args.precision, seed=args.seed, progress=not args.quiet,
        parallel=args.parallel,
    )  # fmt: skip
    summary = classification.train_classifier(
        args.out, classification.LabelledData(args.data, args.domain), init=args.init, pooling=args.pooling,
        num_labels=args.num_labels, epochs=args.epochs, batch_size=args.batch_size, max_length=args.max_length,
        dropout=args.dropout, warmup=args.warmup, evals_per_epoch=args.evals_per_epoch,
        layer_decay=args.layer_decay, train=train, resume=args.resume,
    )  # fmt: skip
    print_summary(summary, None, args.out, f"evaluate with: glassformer evaluate --model {args.out}")
