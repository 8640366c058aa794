"""``glassformer train classify``, ``classify``, ``embed`` and ``similarity`` (the BERT commands)."""

from __future__ import annotations

import argparse
import json
import sys

from glassformer.cli.options import add_device_arguments, report_placement
from glassformer.data.sentiment import DOMAINS


def read_texts(args: argparse.Namespace, what: str) -> list[str]:
    texts = args.texts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        raise ValueError(f"nothing to {what}; pass texts as arguments or lines on stdin")
    return texts


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="sentiment", help="'sentiment' or a TSV of label<TAB>text lines")
    parser.add_argument("--domain", default="movies", choices=list(DOMAINS), help="sentiment: which sentences")
    parser.add_argument("--init", default="minilm", help="pretrained encoder: 'minilm' or a BERT/DistilBERT dir")
    parser.add_argument("--out", required=True, help="the run directory")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    parser.add_argument("--pooling", choices=["mean", "pooler"], default="mean", help="what the head reads")
    parser.add_argument("--num-labels", type=int, default=None, help="for integer labels: how many classes")
    parser.add_argument("--epochs", type=float, default=4.0)
    parser.add_argument("--max-minutes", type=float, default=15.0, help="stop after this much wall-clock time")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128, help="texts are cut to this many tokens")
    parser.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (default 1e-4)")
    parser.add_argument("--warmup", type=float, default=0.06, help="warm-up as a fraction of all steps")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--layer-decay", type=float, default=1.0, help="layer-wise lr decay (1 = none)")
    parser.add_argument("--patience", type=int, default=3, help="evaluations without a better accuracy to stop")
    parser.add_argument("--evals-per-epoch", type=int, default=2)
    add_device_arguments(parser, training=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run_train(args: argparse.Namespace) -> None:
    from glassformer.training.classification import LabelledData, classification_train_config, train_classifier

    train = classification_train_config(
        max_minutes=args.max_minutes,
        lr=args.lr,
        weight_decay=args.weight_decay,
        patience=args.patience,
        device=args.device,
        precision=args.precision,
        seed=args.seed,
        progress=not args.quiet,
    )
    summary = train_classifier(
        args.out,
        LabelledData(args.data, args.domain),
        init=args.init,
        pooling=args.pooling,
        num_labels=args.num_labels,
        epochs=args.epochs,
        batch_size=args.batch_size,
        max_length=args.max_length,
        dropout=args.dropout,
        warmup=args.warmup,
        evals_per_epoch=args.evals_per_epoch,
        layer_decay=args.layer_decay,
        train=train,
        resume=args.resume,
    )
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}))
    print(f"run directory: {args.out} (evaluate with: glassformer evaluate --model {args.out})")


def add_classify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a `train classify` run directory (or a classifier dir)")
    parser.add_argument("texts", nargs="*", help="texts to classify (default: one per line on stdin)")
    parser.add_argument("--json", action="store_true", help="one JSON object per text")
    parser.add_argument("--no-truncation", dest="truncation", action="store_false", help="refuse over-long texts")
    add_device_arguments(parser)


def run_classify(args: argparse.Namespace) -> None:
    from glassformer.models.text_classifier import TextClassifier

    texts = read_texts(args, "classify")
    placement = report_placement(args)
    classifier = TextClassifier.load(args.model, placement.device, placement.precision)
    if not args.truncation:  # check lengths before any work
        classifier.tokenizer.batch_encode(texts, max_length=classifier.max_length)
    for p in classifier.predict(texts):
        if args.json:
            print(json.dumps({"text": p.text, "label": p.label, "probability": round(p.probability, 4),
                              "probabilities": {k: round(v, 4) for k, v in p.probabilities.items()}}))  # fmt: skip
        else:
            print(f"{p.label}\t{p.probability:.3f}\t{p.text}")


def print_classification_evaluation(result: dict) -> None:
    print(f"{result['split']}: {result['texts']} texts")
    print(f"{'method':28s} {'accuracy':>9s} {'F1':>7s}")
    names = {"model": "fine-tuned model", "vader": "VADER rules", "tfidf_logreg": "TF-IDF + logistic regression"}
    for key, name in names.items():
        if key in result:
            print(f"{name:28s} {100 * result[key]['accuracy']:8.2f}% {100 * result[key]['f1']:6.2f}%")
    print(f"predictions: {result['outputs']}")


def add_embed_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("texts", nargs="*", help="sentences (default: one per line on stdin)")
    parser.add_argument("--model", default="minilm", help="'minilm' or a sentence-transformers / BERT directory")
    parser.add_argument("--json", action="store_true", help="print the full vectors as JSON lines")
    add_device_arguments(parser)


def run_embed(args: argparse.Namespace) -> None:
    from glassformer.models.sentence_encoder import SentenceEncoder

    texts = read_texts(args, "embed")
    placement = report_placement(args)
    embeddings = SentenceEncoder.from_pretrained(args.model, placement.device, placement.precision).embed(texts)
    for text, vector in zip(texts, embeddings, strict=True):
        if args.json:
            print(json.dumps({"text": text, "embedding": [round(x, 6) for x in vector.tolist()]}))
        else:
            head = " ".join(f"{x:+.3f}" for x in vector[:6].tolist())
            print(f"{text}\n  ({vector.numel()} dims, norm {vector.norm():.3f}) [{head} ...]")


def add_similarity_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("texts", nargs="*", help="two or more sentences (default: lines on stdin)")
    parser.add_argument("--model", default="minilm", help="'minilm' or a sentence-transformers / BERT directory")
    parser.add_argument("--json", action="store_true", help="print the table as JSON")
    add_device_arguments(parser)


def run_similarity(args: argparse.Namespace) -> None:
    from glassformer.models.sentence_encoder import SentenceEncoder, format_similarity_table

    texts = read_texts(args, "compare")
    if len(texts) < 2:
        raise ValueError("give at least two sentences to compare")
    placement = report_placement(args)
    table = SentenceEncoder.from_pretrained(args.model, placement.device, placement.precision).similarity(texts)
    if args.json:
        print(json.dumps({"texts": texts, "cosine": [[round(x, 4) for x in row] for row in table.tolist()]}))
    else:
        print(format_similarity_table(texts, table))
