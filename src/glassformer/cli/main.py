"""The ``glassformer`` command: a table of commands. Each module below registers its subcommands (with
``set_defaults(func=...)``); ``main`` parses, calls the chosen function and turns the library's one-line errors
into ``glassformer: error: ...`` and exit status 2. No logic of its own."""

from __future__ import annotations

import argparse
import sys

from glassformer import __version__
from glassformer.cli import chat, classify, data, env, generate, tour, train, translate, visualize

COMMANDS = (tour, env, data, train, translate, generate, chat, classify, visualize)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glassformer", description="A Transformer library you can read top to bottom."
    )
    parser.add_argument("--version", action="version", version=f"glassformer {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.register(commands)
    return parser


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
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"glassformer: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
