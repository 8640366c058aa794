"""``glassformer env``: what this machine can do, as glassformer sees it — the first thing to paste into a bug
report. Every ``bench/`` script prints the same one-line summary as its header."""

from __future__ import annotations

import argparse

from glassformer import runtime
from glassformer.backends.cpu import extension, quantized
from glassformer.backends.kernels import kernel_status


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "env",
        help="what this machine can do: device, precisions, fast paths (paste it into bug reports)",
        description="Print the torch version, the device glassformer picks, the CPU's capabilities, which precisions "
        "are native, which optional kernels work here, and a one-line summary.",
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="describe this device (default auto: the one commands pick)")


def run(args: argparse.Namespace) -> None:
    info = runtime.environment(args.device)
    info["glassformer's CPU operators"] = extension.describe()
    info["quantized weights (decoding)"] = quantized.describe()
    status = kernel_status("quantized_decoder_step")
    layouts = "quantized Llama- and GPT-2-style models and encoder-decoders (paper, T5) in float32"
    info["decoding step"] = f"the modules; fused CPU step for {layouts}: {status}"
    width = max(len(name) for name in info)
    for name, value in info.items():
        print(f"{name + ':':<{width + 1}} {value}")
    print()
    print(runtime.env_line(args.device))
