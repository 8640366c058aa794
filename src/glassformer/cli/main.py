"""The ``glassformer`` command: a table of commands. Each module below registers its subcommands (with
``set_defaults(func=...)``); ``main`` parses, calls the chosen function and turns every failure into one line on
stderr: ``glassformer: error: ...`` and exit status 2 for what a user can fix (bad options or files, full or
read-only disks, numerical trouble), 130 after Ctrl-C, 1 for a bug. ``--debug`` shows the traceback instead."""

from __future__ import annotations

import argparse
import errno
import os
import sys

from safetensors import SafetensorError

from glassformer import __version__
from glassformer.cli import chat, classify, data, env, generate, serve, tour, train, translate, visualize
from glassformer.options import OptionError

COMMANDS = (tour, env, data, train, translate, generate, chat, serve, classify, visualize)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glassformer", description="A Transformer library you can read top to bottom."
    )
    parser.add_argument("--version", action="version", version=f"glassformer {__version__}")
    parser.add_argument("--debug", action="store_true", help="on an error, show the full traceback")
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
    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="strict")  # bytes that are not UTF-8: an error, never lone surrogates
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for commands that relaunch themselves (torchrun)
    try:
        status = args.func(args)
    except KeyboardInterrupt as interrupt:
        if args.debug:
            raise
        if rank() == 0:  # every rank of a torchrun job stops alike: rank 0 says so
            print(f"glassformer: {interrupt or 'interrupted'}", file=sys.stderr)
        return 130
    except Exception as error:
        if args.debug:
            raise
        print(f"glassformer{f' (rank {rank()})' if rank() else ''}: {describe(error, vars(args))}", file=sys.stderr)
        return 2 if isinstance(error, EXPECTED) else 1
    return status or 0


def rank() -> int:
    """This process's rank in a torchrun job (0 outside one)."""
    return int(os.environ.get("RANK", "0") or 0)


# what a user can cause and fix: bad options, files and data (ValueError, with JSON and UTF-8 errors), missing or
# unwritable paths and full disks (OSError), damaged weights, numerical trouble, and refusals (RuntimeError)
EXPECTED = (ValueError, OSError, RuntimeError, SafetensorError, ArithmeticError)

FIXES = {
    errno.ENOSPC: "free some space or write somewhere else",
    errno.EDQUOT: "free some space or write somewhere else",
    errno.EROFS: "the file system is read-only; write somewhere else",
    errno.EACCES: "check the permissions, or write somewhere else",
    errno.EPERM: "check the permissions, or write somewhere else",
    errno.ENOENT: "check the path",
    errno.EISDIR: "give a file, not a directory",
    errno.ENOTDIR: "give a directory, not a file",
}


def describe(error: Exception, flags: dict | None = None) -> str:
    """One line: the library's own message (an option named as its flag where there is one), or for an
    operating-system error what failed, on which file, and the fix; for anything else (a bug) its type and message
    and how to see more."""
    if isinstance(error, OSError) and error.errno in FIXES and not _has_own_message(error):
        where = f" ({error.filename})" if error.filename else ""
        return f"error: {error.strerror or os.strerror(error.errno)}{where}; {FIXES[error.errno]}"
    if isinstance(error, UnicodeDecodeError):  # files name themselves (glassformer.files); this is stdin
        return f"error: the input is not UTF-8 text ({error.reason} at byte {error.start}); give UTF-8 text"
    message = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, OptionError) and error.name in (flags or {}):
        message = message.replace(error.name, "--" + error.name.replace("_", "-"), 1)
    if isinstance(error, EXPECTED):
        return f"error: {message}"
    return f"internal error: {type(error).__name__}: {message} — rerun with --debug and report it"


def _has_own_message(error: OSError) -> bool:
    """glassformer's FileNotFoundError("no model at ...") carries its own sentence; the OS's carry errno + strerror."""
    return error.strerror is None and bool(error.args)


if __name__ == "__main__":
    sys.exit(main())
