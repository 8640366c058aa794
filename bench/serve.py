"""Serving speed: `glassformer serve` under 1, 4 and 8 concurrent streaming clients, against `glassformer generate`.

Starts `glassformer serve --model MODEL` in a subprocess (or measures a server already running at --url), then for
each number of clients sends that many streaming /v1/completions requests at once through the official `openai`
client, --rounds times, each greedy for --new-tokens tokens (no stop). Per row: aggregate generated tokens/s (all
tokens of the round / its wall time), time to first token p50/p95, and the mean time between tokens of one stream.
The baseline is `generate`'s own tokens/s at batch 1 (same model, same prompt, same number of tokens, measured in
this process while the server is idle). Goals: 8 clients >= 4x the aggregate tokens/s of 1 client; 1 client >= 0.9x
generate's tokens/s. "step": the server's mean decoding step (model and sampler, from its /metrics), "+ per-token
work": what its thread then spends per step turning the tokens into text and events (goal: <= 10% of a step at 8
clients with int4). A last row: one client streaming while another sends a --long-prompt-token prompt: the
longest wait between the streaming client's tokens (the stall the long prompt causes; chunked prefill bounds it
by one --prefill-chunk) and the long prompt's time to its first token. And: two requests, one after the other,
whose prompts share a --long-prompt-token beginning (a system prompt): the second's time to first token against
the first's (the prefix cache's goal: <= 0.2x). --kv-blocks and --max-batch size the server's paged cache (the same
memory as --max-batch 2 holds 8 short requests with --kv-blocks: README, "The paged cache").

    python bench/serve.py [--model smollm2] [--new-tokens 128] [--rounds 2] [--url http://127.0.0.1:8000]
                          [--quantize int8|int4] [--quantize-activations bf16] [--batch-invariant]
                          [--prefill-chunk N] [--long-prompt N]
                          [--kv-blocks N] [--max-batch N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

import torch

from glassformer import runtime
from glassformer.models.quantization import Quantization
from glassformer.pipelines.language_model import load_language_model

PROMPTS = [
    "The history of the printing press begins",
    "In a small village by the sea, there lived",
    "The main ideas of thermodynamics are",
    "A recipe for bread needs",
    "The capital of France is",
    "def quicksort(items):",
    "The planets of the solar system, in order,",
    "Once upon a time",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not become ready")


async def one_stream(client, model: str, prompt: str, new_tokens: int) -> tuple[float, list[float], int]:
    """``(time to first token, times between chunks, completion tokens)`` of one streamed completion."""
    start = time.perf_counter()
    stamps, tokens = [], 0
    stream = await client.completions.create(
        model=model, prompt=prompt, max_tokens=new_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    async for chunk in stream:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        elif chunk.choices and chunk.choices[0].text:
            stamps.append(time.perf_counter())
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return stamps[0] - start, gaps, tokens


async def round_of(url: str, model: str, clients: int, new_tokens: int) -> tuple[float, list[float], list[float]]:
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="bench", max_retries=0, timeout=600)
    start = time.perf_counter()
    results = await asyncio.gather(*(one_stream(client, model, PROMPTS[i % 8], new_tokens) for i in range(clients)))
    wall = time.perf_counter() - start
    await client.close()
    tokens = sum(r[2] for r in results)
    return tokens / wall, [r[0] for r in results], [g for r in results for g in r[1]]


async def stall_round(url: str, model: str, prompt_tokens: int, new_tokens: int) -> tuple[float, float]:
    """``(longest gap between a streaming client's tokens, the long prompt's time to first token)`` when a prompt of
    about ``prompt_tokens`` tokens arrives while the client streams."""
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="bench", max_retries=0, timeout=600)
    stamps: list[float] = []

    async def streaming() -> None:
        stream = await client.completions.create(model=model, prompt=PROMPTS[0], max_tokens=new_tokens,
                                                 temperature=0, stream=True)  # fmt: skip
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].text:
                stamps.append(time.perf_counter())

    async def long_prompt() -> float:
        while len(stamps) < 8:  # the stream is under way
            await asyncio.sleep(0.005)
        start = time.perf_counter()
        text = " ".join(PROMPTS) + " "
        await client.completions.create(model=model, prompt=text * max(1, prompt_tokens // 60), max_tokens=1,
                                        temperature=0)  # fmt: skip
        return time.perf_counter() - start

    _, first = await asyncio.gather(streaming(), long_prompt())
    await client.close()
    return max(b - a for a, b in zip(stamps, stamps[1:], strict=False)), first


async def shared_prefix_round(url: str, model: str, prompt_tokens: int) -> tuple[float, float]:
    """Times to first token of two requests in a row whose prompts share about ``prompt_tokens`` tokens."""
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="bench", max_retries=0, timeout=600)
    shared = " ".join(f"Note {i}: {PROMPTS[i % len(PROMPTS)]}." for i in range(max(1, prompt_tokens // 11)))
    times = []
    for question in ("What is the first note about?", "Which note mentions France?"):
        start = time.perf_counter()
        await client.completions.create(model=model, prompt=f"{shared}\n{question}", max_tokens=1, temperature=0)
        times.append(time.perf_counter() - start)
    await client.close()
    return times[0], times[1]


def generate_speed(
    model_name: str, new_tokens: int, rounds: int, quantize: str | None, activations: str | None
) -> float:
    quantization = Quantization(quantize, activations=activations) if quantize else None
    model, tokenizer = load_language_model(model_name, quantization=quantization)
    ids = torch.tensor([tokenizer.encode(PROMPTS[0])])
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new_tokens, eos_token_id=None)
        best = max(best, (out.size(1) - ids.size(1)) / (time.perf_counter() - start))
    return best


def step_times(url: str) -> tuple[float, float, float]:
    """The server's ``(decoding steps, seconds in them, seconds of per-token work after them)`` from /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url + "/metrics", timeout=30) as response:
        samples = {s.name: s.value for f in text_string_to_metric_families(response.read().decode()) for s in f.samples
                   if not s.labels}  # fmt: skip
    return (
        samples["glassformer_step_seconds_count"],
        samples["glassformer_step_seconds_sum"],
        samples["glassformer_step_emit_seconds_sum"],
    )


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--url", default=None, help="a server already running (default: start one)")
    parser.add_argument("--quantize", choices=["int8", "int4"], default=None, help="serve (and generate) quantized")
    parser.add_argument(
        "--quantize-activations",
        choices=["int8", "bf16"],
        default=None,
        help="with --quantize: serve (and generate) with these activations in the products",
    )
    parser.add_argument("--batch-invariant", action="store_true", help="serve with --batch-invariant (its cost)")
    parser.add_argument("--prefill-chunk", type=int, default=None, help="serve with this --prefill-chunk")
    parser.add_argument("--prefix-cache-tokens", type=int, default=None, help="serve with this --prefix-cache-tokens")
    parser.add_argument("--long-prompt", type=int, default=960, help="tokens of the last row's long prompt")
    parser.add_argument("--kv-blocks", type=int, default=None, help="serve with this --kv-blocks (the paged pool)")
    parser.add_argument("--max-batch", type=int, default=8, help="serve with this --max-batch (default 8)")
    args = parser.parse_args()
    print(runtime.env_line("cpu"))
    server = None
    url = args.url
    if url is None:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "glassformer", "serve", "--model", args.model, "--port", str(port),
                   "--max-batch", str(args.max_batch),
                   "--max-context", str(max(512, 2 * args.long_prompt + args.new_tokens)),
                   "--device", "cpu", "--precision", "fp32",
                   *(["--quantize", args.quantize] if args.quantize else []),
                   *(["--quantize-activations", args.quantize_activations] if args.quantize_activations else []),
                   *(["--batch-invariant"] if args.batch_invariant else []),
                   *(["--prefill-chunk", str(args.prefill_chunk)] if args.prefill_chunk else []),
                   *(["--kv-blocks", str(args.kv_blocks)] if args.kv_blocks else []),
                   *(["--prefix-cache-tokens", str(args.prefix_cache_tokens)]
                     if args.prefix_cache_tokens is not None else [])]  # fmt: skip
        server = subprocess.Popen(command, stderr=subprocess.DEVNULL, env={**os.environ})
    try:
        wait_ready(url)
        served = args.model
        if server is None:
            import json

            with urllib.request.urlopen(url + "/v1/models") as response:
                served = json.load(response)["data"][0]["id"]
        asyncio.run(round_of(url, served, 1, 8))  # warm up: the first request packs nothing twice, but pays imports
        rows = []
        for clients in (1, 4, 8):
            best = None
            before = step_times(url)
            for _ in range(args.rounds):
                result = asyncio.run(round_of(url, served, clients, args.new_tokens))
                best = result if best is None or result[0] > best[0] else best
            steps, in_steps, after_steps = (b - a for a, b in zip(before, step_times(url), strict=True))
            rows.append((clients, *best, in_steps / steps, after_steps / steps))
        stall, long_first = asyncio.run(stall_round(url, served, args.long_prompt, args.new_tokens))
        first_ttft, repeated_ttft = asyncio.run(shared_prefix_round(url, served, args.long_prompt))
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
    activations = args.quantize_activations if args.quantize else None  # the server runs --precision fp32: as asked
    baseline = generate_speed(args.model, args.new_tokens, args.rounds, args.quantize, activations)
    name = f"{args.model} {args.quantize}" if args.quantize else args.model
    name += f", {activations} activations" if activations else ""
    name += ", --batch-invariant" if args.batch_invariant else ""
    name += f", --prefill-chunk {args.prefill_chunk}" if args.prefill_chunk else ""
    name += f", --prefix-cache-tokens {args.prefix_cache_tokens}" if args.prefix_cache_tokens is not None else ""
    name += f", --kv-blocks {args.kv_blocks}" if args.kv_blocks else ""
    name += f", --max-batch {args.max_batch}" if args.max_batch != 8 else ""
    print(f"{name}, greedy {args.new_tokens} new tokens per request, streaming; best of {args.rounds} rounds")
    print(f"baseline: glassformer generate, batch 1: {baseline:.1f} tokens/s")
    print(f"{'clients':>7} | {'aggregate tok/s':>15} | {'vs 1 client':>11} | {'vs generate':>11} | "
          f"{'TTFT p50':>9} | {'TTFT p95':>9} | {'per token':>9} | {'step':>7} | {'+ per-token work':>16}")  # fmt: skip
    single = rows[0][1]
    for clients, rate, first, gaps, step, work in rows:
        print(
            f"{clients:>7} | {rate:>15.1f} | {rate / single:>10.2f}x | {rate / baseline:>10.2f}x | "
            f"{percentile(first, 50) * 1e3:>7.0f}ms | {percentile(first, 95) * 1e3:>7.0f}ms | "
            f"{statistics.mean(gaps) * 1e3:>7.1f}ms | {step * 1e3:>5.1f}ms | {work * 1e3:>5.2f}ms ({work / step:>4.1%})"
        )
    print(f"a ~{args.long_prompt}-token prompt arriving while 1 client streams: that client's longest wait between "
          f"tokens {stall * 1e3:.0f} ms; the long prompt's first token after {long_first * 1e3:.0f} ms")  # fmt: skip
    print(f"a ~{args.long_prompt}-token shared beginning: first request's TTFT {first_ttft * 1e3:.0f} ms, the next "
          f"one's {repeated_ttft * 1e3:.0f} ms ({repeated_ttft / first_ttft:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
