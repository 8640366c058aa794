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

    from glassformer.cli import generate, train

    train_parser = commands.add_parser("train", help="train a model", description="Train a model.")
    kinds = train_parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    train.add_lm_arguments(
        kinds.add_parser("lm", help="a GPT language model on text", description="Train a GPT language model.")
    )
    generate.add_arguments(
        commands.add_parser(
            "generate",
            help="continue a prompt with a GPT model",
            description="Continue a prompt with a GPT checkpoint, streaming tokens as they come.",
        )
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.command == "tour":
            from glassformer.cli.tour import run_tour

            run_tour(seed=args.seed)
        elif args.command == "train" and args.kind == "lm":
            from glassformer.cli.train import run_lm

            run_lm(args)
        elif args.command == "generate":
            from glassformer.cli.generate import run

            run(args)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"glassformer: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
