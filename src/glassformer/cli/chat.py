"""``glassformer chat``: a multi-turn conversation with an instruction-tuned model in the terminal.

Each turn the whole conversation is rendered with the checkpoint's chat template (``Tokenizer.apply_chat_template``)
and the model continues it, streaming, until it ends its turn (its end-of-sequence token, ``<|im_end|>`` for
SmolLM2). Lines come from the keyboard or from stdin (one user message per line); ``/reset`` starts over, ``/exit``
or end of input quits. When the conversation outgrows the context, the oldest turns are dropped.
"""

from __future__ import annotations

import argparse
import sys

import torch

from glassformer.cli.generate import add_sampling_arguments, sampling_options, text_streamer
from glassformer.cli.options import quantization_of, report_placement
from glassformer.options import check_options
from glassformer.pipelines.language_model import load_language_model


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "chat",
        help="talk with an instruction-tuned model (SmolLM2-135M-Instruct by default)",
        description="A multi-turn conversation in the terminal, rendered with the checkpoint's chat template; one "
        "user message per line (from the keyboard or stdin), /reset to start over, /exit to quit.",
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2", help="an instruction-tuned checkpoint (default: smollm2)")
    parser.add_argument("--system", default=None, help="a system message (the template's default if not given)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="the longest reply, in tokens (default 256)")
    add_sampling_arguments(parser)


def fit_context(messages: list[dict], prompt_ids, limit: int) -> bool:
    """Whether the rendered prompt leaves room to answer; drops the oldest user/assistant pair otherwise."""
    if len(prompt_ids) <= limit:
        return True
    first = 1 if messages[0]["role"] == "system" else 0
    if len(messages) - first <= 1:
        raise ValueError(f"the message is {len(prompt_ids)} tokens, more than the model's context allows; shorten it")
    del messages[first : first + 2]
    return False


def run(args: argparse.Namespace) -> None:
    placement = report_placement(args)
    model, tokenizer = load_language_model(
        args.model, device=placement.device, precision=placement.precision, quantization=quantization_of(args)
    )
    if not tokenizer.chat_template:
        raise ValueError(f"{args.model} has no chat template; chat needs an instruction-tuned checkpoint")
    if model.config.eos_token_id is None:
        raise ValueError(f"{args.model} names no end-of-sequence token, so a reply would never end")
    check_options(max_new_tokens=args.max_new_tokens)
    if args.max_new_tokens >= model.config.max_seq_length:
        raise ValueError(
            f"--max-new-tokens {args.max_new_tokens} leaves no room for a message in the model's context of "
            f"{model.config.max_seq_length} tokens; lower it"
        )
    start = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(start)
    interactive = sys.stdin.isatty()
    if interactive:
        print("Chatting with", args.model, "— /reset to start over, /exit or Ctrl-D to quit.")
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() == "/exit":
            break
        text = line.strip()
        if not text:
            continue
        if text == "/reset":
            messages = list(start)
            continue
        messages.append({"role": "user", "content": text})
        limit = model.config.max_seq_length - args.max_new_tokens
        try:
            while True:
                ids = tokenizer.encode_chat(messages)  # the user's text stays text: no control tokens from it
                if fit_context(messages, ids, limit):
                    break
        except ValueError as error:  # this message cannot be answered; the conversation goes on without it
            messages.pop()
            print(f"glassformer: error: {error}", file=sys.stderr, flush=True)
            continue
        sys.stdout.write("assistant> ")
        streamer = text_streamer(tokenizer)
        model.generate(
            torch.tensor([ids]),
            max_new_tokens=args.max_new_tokens,
            eos_token_id=model.config.eos_token_id,
            on_tokens=streamer,
            **sampling_options(args),
        )
        sys.stdout.write("\n")
        sys.stdout.flush()
        reply = tokenizer.decode(streamer.tokens, skip_special_tokens=True).strip()
        messages.append({"role": "assistant", "content": reply})
