"""``glassformer translate`` and ``glassformer evaluate`` (translation and classification runs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from glassformer.cli.options import (
    add_device_arguments,
    add_quantize_arguments,
    default_of,
    quantization_of,
    report_placement,
)


def register(commands: argparse._SubParsersAction) -> None:
    translate = commands.add_parser(
        "translate",
        help="translate sentences with a trained model",
        description="Translate sentences (arguments, or lines on stdin) with a `train translate` run.",
    )
    add_translate_arguments(translate)
    translate.set_defaults(func=run_translate)
    evaluate = commands.add_parser(
        "evaluate",
        help="score a run on its test split: BLEU/chrF (translation) or accuracy/F1 (classification)",
        description="Translation runs: translate a split of the run's corpus and score it with sacrebleu "
        "(BLEU, chrF). Classification runs: accuracy and F1 next to VADER and TF-IDF + logistic regression.",
    )
    add_evaluate_arguments(evaluate)
    evaluate.set_defaults(func=run_evaluate)


def add_translate_arguments(parser: argparse.ArgumentParser) -> None:
    from glassformer.pipelines.translator import Translator

    parser.add_argument("--model", required=True, help="a `train translate` run directory (or a model directory)")
    parser.add_argument("texts", nargs="*", help="sentences to translate (default: one per line on stdin)")
    parser.add_argument(
        "--beam", type=int, default=default_of(Translator.translate, "num_beams"), help="beam size; 1 = greedy"
    )
    parser.add_argument("--length-penalty", type=float, default=default_of(Translator.translate, "length_penalty"))
    parser.add_argument(
        "--attention", default=None, metavar="PAGE.html",
        help="also write the sentences' cross-attention (alignment per layer and head) beside the beam's "
        "hypotheses as one self-contained HTML page",
    )  # fmt: skip
    add_device_arguments(parser)
    add_quantize_arguments(parser)


def run_translate(args: argparse.Namespace) -> None:
    from glassformer.pipelines.translator import Translator

    placement = report_placement(args)
    translator = Translator.load(args.model, placement.device, placement.precision, quantization_of(args))
    texts = args.texts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        raise ValueError("nothing to translate; pass sentences as arguments or lines on stdin")
    if args.attention and Path(args.attention).suffix not in (".html", ".htm"):
        raise ValueError(f"--attention writes an HTML page; name it .html, not {args.attention!r}")
    for translation in translator.translate(texts, num_beams=args.beam, length_penalty=args.length_penalty):
        print(translation)
    if args.attention:
        from glassformer.visualization.alignment import alignments, save_alignment_html

        items = alignments(translator, texts, num_beams=args.beam, length_penalty=args.length_penalty)
        title = f"Alignments of {Path(args.model).name}"
        print(f"wrote {save_alignment_html(items, args.attention, title)} (open it in a browser; it works offline)",
              file=sys.stderr)  # fmt: skip


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    from glassformer.training.evaluation import evaluate_translation

    parser.add_argument("--model", required=True, help="a `train translate` or `train classify` run directory")
    parser.add_argument("--split", default="test", choices=["train", "valid", "test"], help="default test")
    parser.add_argument("--data", default=None, help="score on this TSV (or 'src.txt,tgt.txt') instead")
    parser.add_argument(
        "--beam", type=int, default=default_of(evaluate_translation, "num_beams"), help="translation: beam size"
    )
    parser.add_argument("--length-penalty", type=float, default=default_of(evaluate_translation, "length_penalty"))
    parser.add_argument("--limit", type=int, default=None, help="only the first N pairs")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device_arguments(parser)
    add_quantize_arguments(parser)


def run_evaluate(args: argparse.Namespace) -> None:
    from glassformer.training.classification import RUN_FILE as CLASSIFICATION_RUN
    from glassformer.training.evaluation import evaluate_translation

    placement = report_placement(args)
    if (Path(args.model) / CLASSIFICATION_RUN).is_file():
        if quantization_of(args) is not None:
            raise ValueError("--quantize evaluates translation runs; classification runs are evaluated in float")
        from glassformer.cli.classify import print_classification_evaluation
        from glassformer.training.classification import evaluate_classifier

        result = evaluate_classifier(args.model, args.split, args.data, True, placement.device, placement.precision)
        print_classification_evaluation(result)
        return
    result = evaluate_translation(
        args.model, args.split, args.data, args.beam, args.length_penalty, args.limit, progress=not args.quiet,
        device=placement.device, precision=placement.precision, quantization=quantization_of(args),
    )  # fmt: skip
    print(
        f"{result['split']}: {result['pairs']} pairs, beam {result['beam']}"
        f"{' (' + args.quantize + ')' if args.quantize else ''}: "
        f"BLEU {result['bleu']:.2f}  chrF {result['chrf']:.2f}  ({result['seconds']} s)"
    )
    print(result["bleu_detail"])
    if "outputs" in result:
        print(f"translations: {result['outputs']}")
