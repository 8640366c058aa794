"""Structured output: 100 answers of SmolLM2-135M-Instruct under JSON schemas, through the server's scheduler (8
slots, sampled at temperature 0.7 with a seed each), every answer parsed and validated with ``jsonschema``; and what
the grammar costs per token: the time llguidance takes to compute a row's allowed tokens, against the whole
decoding step of the batch.

    python bench/structured.py [--answers 100] [--quantize int4] [--max-tokens 200]

The baseline of the overhead column is the decoding step itself (the model); the goal is every answer valid.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import jsonschema

from glassformer import runtime
from glassformer.data.pretrained import resolve_shortcut
from glassformer.generation import structured
from glassformer.models.gpt import GPT
from glassformer.models.quantization import Quantization
from glassformer.serving.requests import Request
from glassformer.serving.scheduler import Scheduler
from glassformer.tokenizer import Tokenizer

SCHEMAS = {
    "person": {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 40}, "age": {"type": "integer", "minimum": 0},
                       "languages": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 4}},
        "required": ["name", "age", "languages"], "additionalProperties": False,
    },
    "product": {
        "type": "object",
        "properties": {"title": {"type": "string", "maxLength": 60}, "price": {"type": "number", "minimum": 0},
                       "category": {"enum": ["book", "food", "tool", "toy"]}, "in_stock": {"type": "boolean"}},
        "required": ["title", "price", "category", "in_stock"], "additionalProperties": False,
    },
    "numbers": {
        "type": "object",
        "properties": {"primes": {"type": "array", "items": {"type": "integer"}, "minItems": 3, "maxItems": 8}},
        "required": ["primes"], "additionalProperties": False,
    },
    "address": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 40},
                       "location": {"type": "object", "properties": {"lat": {"type": "number"},
                                                                    "lon": {"type": "number"}},
                                    "required": ["lat", "lon"], "additionalProperties": False}},
        "required": ["city", "location"], "additionalProperties": False,
    },
}  # fmt: skip
ASKS = {
    "person": "Describe a famous writer as JSON.",
    "product": "Describe an item sold in a shop as JSON.",
    "numbers": "Give some prime numbers as JSON.",
    "address": "Give a city and its coordinates as JSON.",
}


class TimedGuide(structured.Guide):
    """A guide that adds the time of each mask to a shared list."""

    spent: list[float] = []

    def allowed(self):
        start = time.perf_counter()
        mask = super().allowed()
        TimedGuide.spent.append(time.perf_counter() - start)
        return mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--answers", type=int, default=100)
    parser.add_argument("--quantize", choices=["int8", "int4"], default="int4")
    parser.add_argument("--max-tokens", type=int, default=200)
    args = parser.parse_args()
    print(runtime.env_line(), flush=True)
    directory = resolve_shortcut("smollm2")
    model = GPT.from_pretrained(directory, quantization=Quantization(args.quantize) if args.quantize else None)
    tokenizer = Tokenizer.from_pretrained(directory)
    eos = [tokenizer.token_to_id("<|im_end|>")]
    start = time.perf_counter()
    grammars = structured.Grammars(tokenizer, model.config.vocab_size, eos)
    print(f"llguidance's tokenizer: {time.perf_counter() - start:.2f} s (once per model)")
    scheduler = Scheduler(model, tokenizer, max_batch=8, max_context=512, max_queue=args.answers,
                          eos_token_ids=tuple(eos))  # fmt: skip
    scheduler.start()
    names, results = list(SCHEMAS), []
    lock, finished = threading.Lock(), threading.Event()
    start = time.perf_counter()
    for i in range(args.answers):
        name = names[i % len(names)]
        guide = grammars.json(SCHEMAS[name])
        guide.__class__ = TimedGuide
        pieces: list[str] = []

        def deliver(event, name=name, pieces=pieces):
            if event.kind == "text":
                pieces.append(event.text)
                return
            with lock:
                results.append((name, "".join(pieces), event))
                if len(results) == args.answers:
                    finished.set()

        prompt = tokenizer.encode_chat([{"role": "user", "content": ASKS[name]}])
        scheduler.submit(Request(prompt, args.max_tokens, deliver, temperature=0.7, seed=i, guide=guide))
    finished.wait()
    wall = time.perf_counter() - start
    steps, tokens = scheduler.counters.steps, scheduler.counters.generated_tokens
    scheduler.stop()
    valid = 0
    for name, text, event in results:
        try:
            jsonschema.validate(json.loads(text), SCHEMAS[name])
            valid += 1
        except (json.JSONDecodeError, jsonschema.ValidationError) as error:
            print(f"  invalid ({name}, {event.finish_reason}): {str(error).splitlines()[0][:80]}: {text[:80]!r}")
    spent = TimedGuide.spent
    step_ms = 1e3 * wall / max(steps, 1)
    print(f"\nSmolLM2-135M-Instruct {args.quantize or 'float32'}, {args.answers} answers, 8 slots, temperature 0.7")
    print("answers | valid | stop | tokens | tokens/s | mask us/token (p50 / p95) | step ms | mask share of a step")
    stops = sum(e.finish_reason == "stop" for _, _, e in results)
    p50, p95 = (1e6 * statistics.quantiles(spent, n=20)[k] for k in (9, 18))
    share = sum(spent) / wall
    print(f"{args.answers:7d} | {valid:5d} | {stops:4d} | {tokens:6d} | {tokens / wall:8.1f} | {p50:8.0f} / {p95:6.0f}"
          f"{'':12} | {step_ms:7.1f} | {100 * share:.1f}%")  # fmt: skip


if __name__ == "__main__":
    main()
