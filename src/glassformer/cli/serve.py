"""``glassformer serve``: the OpenAI HTTP API (completions, chat, embeddings; streamed or whole) for a decoder-only
model, serving many clients at once by batching their decoding steps (``glassformer.serving``), and a chat page."""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import socket
import sys

from glassformer.cli.options import add_device_arguments, add_quantize_arguments, quantization_of, report_placement
from glassformer.generation.step import MIXED_ROWS
from glassformer.options import check_options
from glassformer.pipelines.resolve import resolve_model

API_KEY_VARIABLE = "GLASSFORMER_API_KEY"


def register(commands: argparse._SubParsersAction) -> None:
    from glassformer.serving.state import ServeConfig

    defaults = ServeConfig()
    parser = commands.add_parser(
        "serve",
        help="serve a model over the OpenAI HTTP API (completions, chat, embeddings) with a chat page at /",
        description="An OpenAI-compatible HTTP server: GET /health, /v1/models; POST /v1/completions, "
        '/v1/chat/completions (streamed with "stream": true), /v1/embeddings (with --embedding-model). Requests '
        "are batched together while they decode; a chat page is at /.",
    )
    parser.add_argument("--model", default="smollm2", help="any model `glassformer generate` opens (default smollm2)")
    parser.add_argument("--name", default=None, help="the model's id in /v1/models (default: --model as given)")
    parser.add_argument("--embedding-model", default=None, help="a sentence encoder for /v1/embeddings, e.g. minilm")
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="the port to listen on (default 8000)")
    parser.add_argument(
        "--max-batch",
        type=int,
        default=defaults.max_batch,
        help=f"sequences decoded together, each with a cache slot (default {defaults.max_batch})",
    )
    parser.add_argument("--max-context", type=int, default=defaults.max_context,
                        help=f"positions per slot, prompt and answer (default {defaults.max_context}, at most the "
                        "model's context)")  # fmt: skip
    parser.add_argument(
        "--max-queue",
        type=int,
        default=defaults.max_queue,
        help=f"requests that may wait for a slot; past it, 503 (default {defaults.max_queue})",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=defaults.request_timeout,
        help=f"seconds a request may take, waiting included (default {defaults.request_timeout:g})",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_VARIABLE),
        help=f"require 'Authorization: Bearer KEY' on /v1/* (default: ${API_KEY_VARIABLE} if set)",
    )
    parser.add_argument(
        "--batch-invariant", action="store_true",
        help="decode each request as a batch of its own: its answer is bit for bit the same whatever else runs "
        "(bf16 batches otherwise round differently), at the cost of throughput with many clients",
    )  # fmt: skip
    parser.add_argument(
        "--prefill-chunk", type=int, default=defaults.prefill_chunk,
        help="prompt tokens read per decoding step: a long prompt delays the running answers by one chunk at a "
        "time, not by its whole length; with the fused CPU step, chunks beside decoding requests are rows of their "
        f"step, at most {MIXED_ROWS} rows in all (default {defaults.prefill_chunk})",
    )  # fmt: skip
    parser.add_argument(
        "--prefix-cache-tokens", type=int, default=defaults.prefix_cache_tokens,
        help="prompt tokens whose keys and values are kept (in blocks of 32) so that a prompt starting alike (a "
        f"system prompt, a growing chat) skips them; 0 turns it off (default {defaults.prefix_cache_tokens})",
    )  # fmt: skip
    parser.add_argument(
        "--kv-blocks", type=int, default=None, metavar="N",
        help="the key/value cache's size in blocks of 32 positions, shared by the running sequences as they grow "
        "and the prefix cache; when they run out the latest request is preempted and read again later (default: "
        "enough for --max-batch sequences of --max-context positions and --prefix-cache-tokens)",
    )  # fmt: skip
    parser.add_argument(
        "--prompt-lookup", type=int, default=defaults.prompt_lookup, metavar="N",
        help="speculative decoding while one request runs alone: each step checks up to N tokens guessed by prompt "
        "lookup (text that quotes its prompt gets several a step; greedy answers unchanged); 0 turns it off "
        f"(default {defaults.prompt_lookup})",
    )  # fmt: skip
    add_device_arguments(parser)
    add_quantize_arguments(parser)
    parser.set_defaults(func=run)


def check_port(host: str, port: int) -> None:
    """That ``host`` resolves and ``port`` is free there, or one ``OSError`` naming the fix."""
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as error:
        raise OSError(f"--host {host!r} is not an address of this machine ({error.strerror})") from None
    with socket.socket(family, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            raise OSError(
                f"cannot listen on {host}:{port} ({error.strerror}); is another server running there? "
                "choose another --port"
            ) from None


def run(args: argparse.Namespace) -> None:
    import uvicorn

    from glassformer.serving.app import create_app
    from glassformer.serving.loading import describe_memory, load_served
    from glassformer.serving.speculation import check_speculation
    from glassformer.serving.state import ServeConfig, Server

    check_options(
        max_batch=args.max_batch, max_context=args.max_context, max_queue=args.max_queue,
        request_timeout=args.request_timeout, port=args.port, prefill_chunk=args.prefill_chunk,
        prefix_cache_tokens=args.prefix_cache_tokens, prompt_lookup=args.prompt_lookup, kv_blocks=args.kv_blocks,
    )  # fmt: skip
    check_speculation(args.prompt_lookup, args.batch_invariant)
    check_port(args.host, args.port)  # a port in use, a bad host, a missing model: errors now, not after starting
    resolve_model(args.model)
    if args.embedding_model is not None:
        resolve_model(args.embedding_model)
    placement = report_placement(args)
    config = ServeConfig(
        args.max_batch, args.max_context, args.max_queue, args.request_timeout, args.api_key, args.batch_invariant,
        args.prefill_chunk, args.prefix_cache_tokens, args.prompt_lookup, args.kv_blocks,
    )  # fmt: skip
    uv: uvicorn.Server | None = None

    load = functools.partial(
        load_served, args.model, args.max_batch, args.max_context, name=args.name,
        embedding_model=args.embedding_model, device=placement.device, precision=placement.precision,
        quantization=quantization_of(args), prefix_cache_tokens=0 if args.batch_invariant else args.prefix_cache_tokens,
        kv_blocks=args.kv_blocks,
    )  # fmt: skip

    def ready(server: Server) -> None:
        if server.error:
            print(f"glassformer: error: the model failed to load: {server.error}", file=sys.stderr, flush=True)
            uv.should_exit = True
            return
        scheduler = server.scheduler
        print(
            f"glassformer: serving {server.served.name} on http://{args.host}:{args.port} — up to "
            f"{scheduler.max_batch} sequences of {scheduler.max_context} positions at once, "
            f"{scheduler.max_queue} waiting",
            file=sys.stderr,
        )
        each = "; each request as a batch of its own (--batch-invariant)" if scheduler.batch_invariant else ""
        print(f"glassformer: decoding step: {scheduler.step.describe()}{each}", file=sys.stderr)
        print(f"glassformer: {describe_memory(server.served.memory)}", file=sys.stderr, flush=True)

    server = Server(load, config, on_ready=ready)
    uv = uvicorn.Server(uvicorn.Config(create_app(server), host=args.host, port=args.port, log_level="warning"))
    print(f"glassformer: loading {args.model}; /health answers 503 until it is ready", file=sys.stderr, flush=True)
    # until Ctrl-C or SIGTERM: uvicorn finishes the requests in flight, stops, and raises the signal again where
    # Python handles SIGINT (not where the parent ignores it): either way, a clean stop
    try:
        with contextlib.suppress(KeyboardInterrupt):
            uv.run()
    except SystemExit:  # uvicorn could not start (it has logged why): the port was taken after check_port
        raise OSError(f"could not listen on {args.host}:{args.port}; choose another with --port") from None
    if server.error:
        raise RuntimeError(f"the model failed to load: {server.error}")
    if not uv.started:
        raise OSError(f"could not listen on {args.host}:{args.port}; is the port in use? choose another with --port")
    print("glassformer: the server stopped (Ctrl-C or SIGTERM) and shut down cleanly", file=sys.stderr)
