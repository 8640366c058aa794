"""The two flags of every command that trains or runs a model: ``--device`` and ``--precision``, both ``auto`` by
default (``glassformer.runtime.place``: a GPU if torch sees one; bfloat16 where the hardware computes in it,
float32 where it would be emulated). What was chosen, and why, is printed on stderr."""

from __future__ import annotations

import argparse
import inspect
import sys

from glassformer import runtime


def add_device_arguments(parser: argparse.ArgumentParser, training: bool = False) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (default: a CUDA or MPS GPU if there is one, else the CPU), cpu, cuda, cuda:N, mps",
    )
    what = "autocast for the matrix products, float32 weights; fp16 scales the loss" if training else "the weights"
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", *runtime.PRECISIONS],
        help=f"auto (default: bf16 where the hardware computes in it natively, else fp32), fp32, bf16, fp16 ({what})",
    )
    # the old spellings, kept working: --bf16 (generate, chat, train lm) and --no-bf16 (train translate/classify)
    parser.add_argument("--bf16", dest="precision", action="store_const", const="bf16", help=argparse.SUPPRESS)
    parser.add_argument("--no-bf16", dest="precision", action="store_const", const="fp32", help=argparse.SUPPRESS)


def report_placement(args: argparse.Namespace) -> runtime.Placement:
    """Resolve the flags (a one-line error for a device that is not there) and say what was chosen, on stderr."""
    placement = runtime.place(args.device, args.precision)
    print(f"glassformer: {placement.describe()}", file=sys.stderr)
    return placement


def default_of(function, name: str):
    """The default of ``function``'s parameter ``name``: flags take their defaults from the library, never restate
    them."""
    return inspect.signature(function).parameters[name].default
