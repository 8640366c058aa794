"""Speculative decoding against plain decoding: SmolLM2-135M-Instruct, greedy, on tasks that quote their input
(repeat a paragraph with one word changed; fix a typo in a function) and one that does not (a free answer). Rows:
prompt lookup in float32 and int4, and float32 checking the drafts of its own int4 copy (``assistant_model``, 4 a
pass). Per row: tokens/s of each, the speed-up, the drafts
accepted, and whether the output is identical to plain greedy decoding (it must be). Then the server's scheduler
(``glassformer serve --prompt-lookup``) with one request at a time, float32 and int4: its tokens/s from submission
to the last token with and without drafts, the drafts accepted (its /metrics counters), and whether the answer is
the same.

    python bench/speculative.py [--new-tokens 128] [--draft 8] [--repeats 2]
"""

from __future__ import annotations

import argparse
import threading
import time

import torch

from glassformer import runtime
from glassformer.data.pretrained import resolve_shortcut
from glassformer.generation.config import GenerationConfig
from glassformer.generation.sampler import Sampling
from glassformer.generation.speculative import AssistantModel, PromptLookup, speculative_decode
from glassformer.generation.step import choose_step
from glassformer.models.gpt import GPT
from glassformer.models.quantization import Quantization
from glassformer.serving.requests import Request
from glassformer.serving.scheduler import Scheduler
from glassformer.tokenizer import Tokenizer

TASKS = {
    "edit a paragraph": "Repeat this paragraph exactly, but change the word 'blue' to 'green': The sky over the "
    "harbour was blue that morning, and the fishermen pulled their boats onto the sand while the gulls circled above "
    "the old lighthouse. Children ran along the pier, and the smell of salt and tar hung in the air.",
    "fix code": "Fix the typo in this Python function and return the whole function:\n\ndef average(numbers):\n"
    "    total = 0\n    for number in numbers:\n        total += numbr\n    return total / len(numbers)\n",
    "free answer": "Write a short story about a robot who learns to paint.",
}


def timed(function, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = function()
        best = min(best, time.perf_counter() - start)
    return best, out


def measure(model: GPT, ids: torch.Tensor, new_tokens: int, draft: int, repeats: int, assistant=None) -> tuple:
    """``(plain seconds, speculative seconds, new tokens, stats, identical)`` for one prompt: drafts by prompt
    lookup, or by ``assistant``'s greedy tokens."""
    eos = model.config.eos_token_id
    config = GenerationConfig(max_new_tokens=new_tokens, eos_token_id=eos, prompt_lookup_num_tokens=draft)
    stats: dict = {}
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=4)  # warm up
        plain_s, plain = timed(lambda: model.generate(ids, max_new_tokens=new_tokens, eos_token_id=eos), repeats)
        step, sampling = choose_step(model), Sampling.of([config])
        lookup_s, lookup = timed(
            lambda: speculative_decode(
                model,
                step,
                ids,
                config,
                ids.size(1) + new_tokens,
                sampling,
                PromptLookup(config) if assistant is None else AssistantModel(assistant, 4, ids.size(1) + new_tokens),
                stats=stats,
            ),
            repeats,
        )
    return plain_s, lookup_s, plain.size(1) - ids.size(1), stats, torch.equal(plain, lookup)


def serve_once(model: GPT, tokenizer: Tokenizer, ids: list[int], new_tokens: int, draft: int) -> tuple:
    """``(seconds, tokens, drafted, accepted)`` of one greedy request through a scheduler started with
    ``prompt_lookup=draft`` (0: plain), after a warm-up request."""
    scheduler = Scheduler(model, tokenizer, max_batch=2, max_context=len(ids) + new_tokens + 8, prompt_lookup=draft,
                          eos_token_ids=(model.config.eos_token_id,), prefix_cache_tokens=0)  # fmt: skip
    scheduler.start()
    try:
        result = None
        for _ in range(2):  # the first warms up
            done = threading.Event()
            request = Request(ids, new_tokens, lambda event, d=done: d.set() if event.kind != "text" else None)
            start = time.perf_counter()
            scheduler.submit(request)
            done.wait(600)
            tokens = list(request.tokens)
            result = (time.perf_counter() - start, tokens)
        metrics = scheduler.metrics
        return (*result, metrics.draft_tokens._value.get(), metrics.accepted_tokens._value.get())
    finally:
        scheduler.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--draft", type=int, default=8, help="prompt_lookup_num_tokens")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(runtime.env_line(), flush=True)
    directory = resolve_shortcut("smollm2")
    tokenizer = Tokenizer.from_pretrained(directory)
    print(f"SmolLM2-135M-Instruct, greedy, up to {args.new_tokens} new tokens, drafts of up to {args.draft}, "
          f"best of {args.repeats}")  # fmt: skip
    print(f"{'task':18} {'weights':8} {'plain tok/s':>11} {'drafted tok/s':>13} {'speed-up':>8} {'accepted':>9} "
          f"{'passes':>6}  identical")  # fmt: skip
    float32 = GPT.from_pretrained(directory)
    int4 = GPT.from_pretrained(directory, quantization=Quantization("int4"))
    rows = [("float32", float32, None), ("int4", int4, None), ("f32+int4", float32, int4)]
    for weights, model, assistant in rows:  # the last: float32 checking the drafts of its own int4 copy (4 a pass)
        for task, text in TASKS.items():
            ids = torch.tensor([tokenizer.encode_chat([{"role": "user", "content": text}])])
            plain_s, spec_s, new, stats, same = measure(
                model, ids, args.new_tokens, args.draft, args.repeats, assistant
            )
            kept = f"{stats['accepted']:4d}/{stats['drafted']:<4d}"
            print(f"{task:18} {weights:8} {new / plain_s:11.1f} {new / spec_s:13.1f} {plain_s / spec_s:7.2f}x "
                  f"{kept} {stats['passes']:6d}  {same}", flush=True)  # fmt: skip
    print("\nthe server's scheduler, one request at a time (glassformer serve --prompt-lookup): tokens/s from "
          "submission to the last token; drafts accepted over both runs")  # fmt: skip
    for weights, model in (("float32", float32), ("int4", int4)):
        for task, text in TASKS.items():
            ids = tokenizer.encode_chat([{"role": "user", "content": text}])
            plain_s, plain, _, _ = serve_once(model, tokenizer, ids, args.new_tokens, 0)
            spec_s, spec, drafted, accepted = serve_once(model, tokenizer, ids, args.new_tokens, args.draft)
            kept = f"{int(accepted):4d}/{int(drafted):<4d}"
            print(f"{task:18} {'serve ' + weights:14} {len(plain) / plain_s:11.1f} {len(spec) / spec_s:13.1f} "
                  f"{plain_s / spec_s * len(spec) / max(len(plain), 1):7.2f}x {kept}  {plain == spec}",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
