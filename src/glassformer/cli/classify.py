"""``glassformer classify``, ``embed`` and ``similarity`` (the BERT commands; training is ``train classify``)."""

from __future__ import annotations

import argparse
import json
import sys

from glassformer.cli.options import add_device_arguments, add_quantize_arguments, quantization_of, report_placement


def register(commands: argparse._SubParsersAction) -> None:
    for name, add, run, help, description in (
        ("classify", add_classify_arguments, run_classify, "label texts with a trained classifier",
         "Print each text's label and its probability (texts as arguments or lines on stdin)."),
        ("embed", add_embed_arguments, run_embed, "sentence embeddings (all-MiniLM-L6-v2 by default)",
         "Mean-pooled, L2-normalized sentence embeddings from a BERT encoder."),
        ("similarity", add_similarity_arguments, run_similarity, "cosine similarity table of sentences",
         "Cosine similarity of every pair of sentences, from their embeddings."),
    ):  # fmt: skip
        parser = commands.add_parser(name, help=help, description=description)
        add(parser)
        parser.set_defaults(func=run)


def read_texts(args: argparse.Namespace, what: str) -> list[str]:
    texts = args.texts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        raise ValueError(f"nothing to {what}; pass texts as arguments or lines on stdin")
    return texts


def add_classify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a `train classify` run directory (or a classifier dir)")
    parser.add_argument("texts", nargs="*", help="texts to classify (default: one per line on stdin)")
    parser.add_argument("--json", action="store_true", help="one JSON object per text")
    parser.add_argument("--no-truncation", dest="truncation", action="store_false", help="refuse over-long texts")
    add_device_arguments(parser)
    add_quantize_arguments(parser)


def run_classify(args: argparse.Namespace) -> None:
    from glassformer.pipelines.text_classifier import TextClassifier

    texts = read_texts(args, "classify")
    placement = report_placement(args)
    classifier = TextClassifier.load(args.model, placement.device, placement.precision, quantization_of(args))
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
    add_quantize_arguments(parser)


def run_embed(args: argparse.Namespace) -> None:
    from glassformer.pipelines.sentence_encoder import SentenceEncoder

    texts = read_texts(args, "embed")
    placement = report_placement(args)
    encoder = SentenceEncoder.from_pretrained(args.model, placement.device, placement.precision, quantization_of(args))
    embeddings = encoder.embed(texts)
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
    add_quantize_arguments(parser)


def run_similarity(args: argparse.Namespace) -> None:
    from glassformer.pipelines.sentence_encoder import SentenceEncoder, format_similarity_table

    texts = read_texts(args, "compare")
    if len(texts) < 2:
        raise ValueError("give at least two sentences to compare")
    placement = report_placement(args)
    encoder = SentenceEncoder.from_pretrained(args.model, placement.device, placement.precision, quantization_of(args))
    table = encoder.similarity(texts)
    if args.json:
        print(json.dumps({"texts": texts, "cosine": [[round(x, 4) for x in row] for row in table.tolist()]}))
    else:
        print(format_similarity_table(texts, table))
