"""``glassformer generate``: continue a prompt with a decoder-only checkpoint (a GPT run, GPT-2, Llama, GGUF or the
``smollm2`` shortcut), streaming the text as it comes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import torch

from glassformer.cli.options import add_device_arguments, add_quantize_arguments, quantization_of, report_placement
from glassformer.generation.config import GenerationConfig
from glassformer.generation.text_stream import TextStream
from glassformer.pipelines.language_model import load_language_model
from glassformer.tokenizer import Tokenizer

DEFAULT_NEW_TOKENS = 50  # when neither --max-length nor --max-new-tokens is given: a paragraph, not 20 tokens


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "generate",
        help="continue a prompt with a GPT or Llama model (smollm2: real pretrained weights)",
        description="Continue a prompt with a decoder-only checkpoint (a GPT run, Hugging Face GPT-2 or Llama, a GGUF "
        "file, or the smollm2 shortcut), streaming tokens as they come.",
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """The decoding flags shared by ``generate`` and ``chat``, defaults ``GenerationConfig``'s (the guide's
    settings: --sample --temperature 0.7 --top-k 50 --top-p 0.95 --no-repeat-ngram-size 2)."""
    defaults = GenerationConfig()
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=defaults.temperature)
    parser.add_argument("--top-k", type=int, default=defaults.top_k)
    parser.add_argument("--top-p", type=float, default=defaults.top_p)
    parser.add_argument("--no-repeat-ngram-size", type=int, default=defaults.no_repeat_ngram_size)
    parser.add_argument("--repetition-penalty", type=float, default=defaults.repetition_penalty)
    parser.add_argument("--presence-penalty", type=float, default=defaults.presence_penalty, help="OpenAI's")
    parser.add_argument("--frequency-penalty", type=float, default=defaults.frequency_penalty, help="OpenAI's")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="makes sampling reproducible")
    parser.add_argument(
        "--prompt-lookup", type=int, default=None, metavar="N",
        help="speculative decoding: draft up to N tokens from text earlier in the conversation (same output)",
    )  # fmt: skip
    add_device_arguments(parser)
    add_quantize_arguments(parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="a glassformer GPT run/checkpoint, a Hugging Face GPT-2 or Llama dir, a .gguf file, or 'smollm2'",
    )
    parser.add_argument("--prompt", required=True, help="the text to continue")
    parser.add_argument("--max-length", type=int, default=None, help="total tokens, prompt included")
    parser.add_argument(
        "--max-new-tokens", type=int, default=None, help=f"new tokens (default {DEFAULT_NEW_TOKENS} if no max length)"
    )
    parser.add_argument("--min-new-tokens", type=int, default=GenerationConfig().min_new_tokens)
    parser.add_argument("--num-beams", type=int, default=GenerationConfig().num_beams)
    parser.add_argument("--length-penalty", type=float, default=GenerationConfig().length_penalty, help="beam search")
    add_sampling_arguments(parser)


def text_streamer(tokenizer: Tokenizer, write: Callable[[str], object] | None = None) -> Callable:
    """An ``on_tokens`` callback for ``generate`` that writes the settled new text of row 0 as it grows
    (``glassformer.generation.text_stream.TextStream``: never half a character) to ``write`` (default: whatever
    ``sys.stdout`` is when it writes); ``streamer.tokens`` holds the ids so far."""
    text = TextStream(tokenizer)

    def stream(tokens: torch.Tensor) -> None:
        piece, _ = text.push(int(tokens[0]))
        if piece:
            (write or sys.stdout.write)(piece)
            sys.stdout.flush()

    stream.tokens = text.tokens
    return stream


def sampling_options(args: argparse.Namespace) -> dict:
    return dict(
        do_sample=args.sample,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        no_repeat_ngram_size=args.no_repeat_ngram_size,
        repetition_penalty=args.repetition_penalty,
        presence_penalty=args.presence_penalty,
        frequency_penalty=args.frequency_penalty,
        seed=args.seed,
        prompt_lookup_num_tokens=args.prompt_lookup,
    )


def run(args: argparse.Namespace) -> None:
    if not args.prompt:
        raise ValueError("the prompt is empty; pass some text with --prompt")
    placement = report_placement(args)
    model, tokenizer = load_language_model(
        args.model, device=placement.device, precision=placement.precision, quantization=quantization_of(args)
    )
    ids = tokenizer.encode(args.prompt)
    if args.max_length is None and args.max_new_tokens is None:
        args.max_new_tokens = DEFAULT_NEW_TOKENS
    streamer = text_streamer(tokenizer)

    def stream(tokens: torch.Tensor) -> None:
        if not streamer.tokens:  # generate() has checked its options: show the prompt, then the tokens as they come
            sys.stdout.write(args.prompt)
        streamer(tokens)

    output = model.generate(
        torch.tensor([ids]),
        max_length=args.max_length,
        max_new_tokens=args.max_new_tokens,
        min_new_tokens=args.min_new_tokens,
        num_beams=args.num_beams,
        length_penalty=args.length_penalty,
        on_tokens=stream if args.num_beams == 1 else None,
        **sampling_options(args),
    )
    if args.num_beams > 1:  # beam search knows its best hypothesis only at the end
        sys.stdout.write(args.prompt + tokenizer.decode(output[0, len(ids) :].tolist(), skip_special_tokens=True))
    sys.stdout.write("\n")
