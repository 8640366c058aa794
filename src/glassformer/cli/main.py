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
    except (ValueError, FileNotFoundError) as error:
        print(f"glassformer: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
