"""The ``glassformer`` command: parse arguments, call the library, print. No logic of its own."""

from __future__ import annotations

import argparse
import sys

from glassformer import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glassformer",
        description="A Transformer library you can read top to bottom.",
    )
    parser.add_argument("--version", action="version", version=f"glassformer {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    tour = commands.add_parser(
        "tour",
        help="walk through the guide's sections with glassformer's parts",
        description="Run the guide's worked examples with glassformer's parts and print each result, "
        "flagging the numbers the guide got wrong.",
    )
    tour.add_argument("--seed", type=int, default=42, help="random seed for the random examples (default 42)")

    from glassformer.cli import chat, classify, data, env, generate, train, translate, visualize

    env.add_arguments(
        commands.add_parser(
            "env",
            help="what this machine can do: device, precisions, fast paths (paste it into bug reports)",
            description="Print the torch version, the device glassformer picks, the CPU's capabilities, which "
            "precisions are native, which optional kernels work here, and a one-line summary.",
        )
    )

    train_parser = commands.add_parser("train", help="train a model", description="Train a model.")
    kinds = train_parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    train.add_lm_arguments(
        kinds.add_parser("lm", help="a GPT language model on text", description="Train a GPT language model.")
    )
    translate.add_train_arguments(
        kinds.add_parser(
            "translate",
            help="an encoder-decoder Transformer on sentence pairs",
            description="Train the encoder-decoder Transformer to translate (German → English Bible by default).",
        )
    )
    classify.add_train_arguments(
        kinds.add_parser(
            "classify",
            help="fine-tune a BERT text classifier (sentiment by default)",
            description="Fine-tune BertForSequenceClassification from pretrained weights (all-MiniLM-L6-v2 by "
            "default) on labelled texts (the VADER paper's movie-review sentences by default).",
        )
    )
    translate.add_translate_arguments(
        commands.add_parser(
            "translate",
            help="translate sentences with a trained model",
            description="Translate sentences (arguments, or lines on stdin) with a `train translate` run.",
        )
    )
    translate.add_evaluate_arguments(
        commands.add_parser(
            "evaluate",
            help="score a run on its test split: BLEU/chrF (translation) or accuracy/F1 (classification)",
            description="Translation runs: translate a split of the run's corpus and score it with sacrebleu "
            "(BLEU, chrF). Classification runs: accuracy and F1 next to VADER and TF-IDF + logistic regression.",
        )
    )
    classify.add_classify_arguments(
        commands.add_parser(
            "classify",
            help="label texts with a trained classifier",
            description="Print each text's label and its probability (texts as arguments or lines on stdin).",
        )
    )
    classify.add_embed_arguments(
        commands.add_parser(
            "embed",
            help="sentence embeddings (all-MiniLM-L6-v2 by default)",
            description="Mean-pooled, L2-normalized sentence embeddings from a BERT encoder.",
        )
    )
    classify.add_similarity_arguments(
        commands.add_parser(
            "similarity",
            help="cosine similarity table of sentences",
            description="Cosine similarity of every pair of sentences, from their embeddings.",
        )
    )
    data.add_arguments(
        commands.add_parser("data", help="fetch corpora into the cache", description="Fetch and prepare corpora.")
    )
    generate.add_arguments(
        commands.add_parser(
            "generate",
            help="continue a prompt with a GPT or Llama model (smollm2: real pretrained weights)",
            description="Continue a prompt with a decoder-only checkpoint (a GPT run, Hugging Face GPT-2 or Llama, "
            "a GGUF file, or the smollm2 shortcut), streaming tokens as they come.",
        )
    )
    chat.add_arguments(
        commands.add_parser(
            "chat",
            help="talk with an instruction-tuned model (SmolLM2-135M-Instruct by default)",
            description="A multi-turn conversation in the terminal, rendered with the checkpoint's chat template; "
            "one user message per line (from the keyboard or stdin), /reset to start over, /exit to quit.",
        )
    )
    visualize.add_visualize_arguments(
        commands.add_parser(
            "visualize",
            help="an attention page (head view + model view) as one self-contained HTML file",
            description="Run a model on a text and write its attention weights as an HTML page that works offline: "
            "a head view (lines between tokens, a layer selector, head toggles) and a model view (every layer x "
            "head; click to enlarge). Translation models show encoder, decoder and cross attention.",
        )
    )
    visualize.add_figures_arguments(
        commands.add_parser(
            "figures",
            help="the guide's figures with matplotlib (PNG or SVG)",
            description="attention heat maps, the positional-encoding heat map, embedding similarity, padding and "
            "look-ahead masks, training curves.",
        )
    )
    return parser


def is_classification_run(path: str) -> bool:
    from pathlib import Path

    from glassformer.training.classification import RUN_FILE

    return (Path(path) / RUN_FILE).is_file()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "figures" and not any(e.startswith("-") for e in extra):
        args.texts += extra  # texts given after an option (`figures masks --model M "a b" "c"`)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return 0
    from glassformer.cli import classify, data, env, translate

    try:
        if args.command == "env":
            env.run(args)
        elif args.command == "tour":
            from glassformer.cli.tour import run_tour

            run_tour(seed=args.seed)
        elif args.command == "train" and args.kind == "lm":
            from glassformer.cli.train import run_lm

            run_lm(args)
        elif args.command == "train" and args.kind == "translate":
            translate.run_train(args)
        elif args.command == "train" and args.kind == "classify":
            classify.run_train(args)
        elif args.command == "translate":
            translate.run_translate(args)
        elif args.command == "evaluate" and is_classification_run(args.model):
            from glassformer.cli.options import report_placement
            from glassformer.training.classification import evaluate_classifier

            placement = report_placement(args)
            result = evaluate_classifier(args.model, args.split, args.data, True, placement.device, placement.precision)
            classify.print_classification_evaluation(result)
        elif args.command == "evaluate":
            translate.run_evaluate(args)
        elif args.command == "classify":
            classify.run_classify(args)
        elif args.command == "embed":
            classify.run_embed(args)
        elif args.command == "similarity":
            classify.run_similarity(args)
        elif args.command == "data":
            data.run(args)
        elif args.command == "generate":
            from glassformer.cli.generate import run

            run(args)
        elif args.command == "visualize":
            from glassformer.cli.visualize import run_visualize

            run_visualize(args)
        elif args.command == "figures":
            from glassformer.cli.visualize import run_figures

            run_figures(args)
        elif args.command == "chat":
            from glassformer.cli.chat import run

            run(args)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"glassformer: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
