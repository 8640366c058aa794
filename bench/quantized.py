"""Quantized decoding: SmolLM2-135M-Instruct greedy, glassformer float32 / bfloat16 (where native) / int8 / int4
against transformers float32 and llama.cpp on the same GGUF file (Q4_1 blocks, Q8_0 embedding table).

    python bench/quantized.py [--new-tokens 128] [--batch 8] [--repeats 2] [--llama-python PATH]

Rows per batch size (1 and --batch): tokens/s of decoding after the prompt (every variant: n new tokens over
T(n + 1) − T(1), llama.cpp by timing its own loop), weight bytes read per token, that traffic as a fraction of the
memory bandwidth measured here with a large copy, the time of the 32-token prompt with the first new token, and
(batch 1) tokens/s of reading a 512-token prompt; for int4 at batch 1, the share of the time spent outside the decoding
step's operator and the output layer (Python, the sampler); for int4 with bfloat16 activations, a decoding step after
1,500 tokens with the key/value cache in float32 against bfloat16 (what bfloat16 activations keep it in).
Then each variant's resident memory, each loaded in a fresh
process with its tokenizer (``load_language_model``, what generate / chat / serve do): the process's peak while
loading (VmHWM), what loading adds to a process that imported everything (VmRSS after − before: the model and
what the load leaves behind), and what the model and its tokenizer hold (given back when they are deleted).

- glassformer float32 / bfloat16: the GGUF file dequantized (``GPT.from_pretrained``), weights packed for oneDNN.
- int4: ``Quantization("int4")``: the Q4_1 blocks used as they are, the Q8_0 table as int8 with groups of 32; with
  bfloat16 activations (``activations="bf16"``, where the kernel multiplies them: ``auto``'s choice there) for
  products of 4 to 256 rows: batch 8, the prompts.
- int8: ``Quantization("int8")``: the matrices dequantized and quantized again per output channel, table as int4's;
  with int8 activations (``activations="int8"``) for products of more than 64 rows: the long prompt.
- llama.cpp: ``llama-cpp-python`` in its own virtual environment (``--llama-python``, default
  ``bench/.venv-llama/bin/python``), never a glassformer dependency. Build it once with
  ``python3 -m venv bench/.venv-llama && bench/.venv-llama/bin/pip install llama-cpp-python`` (it compiles llama.cpp
  with the system compiler, minutes). Batch 1 only: its Python API decodes one sequence.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from glassformer import runtime
from glassformer.backends.cpu import decoder
from glassformer.backends.cpu.quantized import describe as describe_kernels
from glassformer.backends.kernels import kernel_works
from glassformer.data.pretrained import resolve_shortcut
from glassformer.generation.step import choose_step
from glassformer.models.gpt import GPT
from glassformer.models.quantization import Quantization
from glassformer.tokenizer import Tokenizer

PROMPT = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined a screw "
    "press with movable metal type. Within fifty years, presses were working in more than two hundred cities."
)
LOAD = """
import gc, sys, time
from glassformer import runtime
from glassformer.models.quantization import Quantization
from glassformer.pipelines.language_model import load_language_model
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
kind = sys.argv[1]
before = status("VmRSS:")
start = time.perf_counter()
model, tokenizer = load_language_model("smollm2", quantization=None if kind == "float32" else Quantization(kind))
seconds = time.perf_counter() - start
after = status("VmRSS:")
del model, tokenizer
gc.collect()
runtime.release_free_memory()
print(before, status("VmHWM:"), after, status("VmRSS:"), seconds)
"""
LLAMA = """
import sys, time
from llama_cpp import Llama
path, prompt, new, threads, long_prompt = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[6]
llm = Llama(model_path=path, n_threads=threads, n_ctx=1024, n_batch=512, verbose=False)
best, prompt_best, long_best = 0.0, float("inf"), float("inf")
long_tokens = llm.tokenize(long_prompt.encode())[:512]
for _ in range(int(sys.argv[5]) + 1):  # the first is a warm-up
    llm.reset()
    tokens = llm.tokenize(prompt.encode())
    start = time.perf_counter()
    llm.eval(tokens)
    token = llm.sample(temp=0.0)
    prompt_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(new):
        llm.eval([token])
        token = llm.sample(temp=0.0)
    best, prompt_best = max(best, new / (time.perf_counter() - start)), min(prompt_best, prompt_seconds)
    llm.reset()
    start = time.perf_counter()
    llm.eval(long_tokens)
    long_best = min(long_best, (time.perf_counter() - start) / len(long_tokens))
print(best, prompt_best, 1 / long_best)
"""


def bandwidth() -> float:
    """Bytes per second of a 512 MiB copy (read + write), best of 3."""
    a = torch.ones(128 << 20)
    b = torch.empty_like(a)
    best = float("inf")
    for _ in range(4):
        start = time.perf_counter()
        b.copy_(a)
        best = min(best, time.perf_counter() - start)
    return 2 * a.numel() * 4 / best


def weight_bytes(model: GPT) -> int:
    """Bytes of the matrices one decoding step reads: every Linear (the tied output layer is the table) once."""
    total, seen = 0, set()
    for module in model.modules():
        table = getattr(module, "quantized", None)
        if table is not None and id(table) not in seen:
            seen.add(id(table))
            total += table.nbytes
        elif isinstance(module, torch.nn.Linear) and module.weight is not None and id(module.weight) not in seen:
            seen.add(id(module.weight))
            total += module.weight.numel() * module.weight.element_size()
    return total


def decode_rate(generate, repeats: int, new_tokens: int, batch: int) -> tuple[float, float]:
    """``(tokens/s of decoding, seconds of the prompt)``: ``generate(n)`` makes n new tokens; the prompt and first token
    cost T(1), so decoding alone is n / (T(n + 1) − T(1)), each T the best of ``repeats`` after one warm-up."""
    generate(2)  # warm-up: probes, kernels, packed layouts are made once

    def best(n: int) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            generate(n)
            times.append(time.perf_counter() - start)
        return min(times)

    first = best(1)
    return new_tokens * batch / (best(new_tokens + 1) - first), first


def prefill_rate(model: GPT, ids: torch.Tensor, repeats: int) -> float:
    """Tokens/s of reading a long prompt (one forward over it, as ``generate`` starts), best of ``repeats``."""
    with torch.inference_mode():
        model(ids[:, :64])  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(ids)
            times.append(time.perf_counter() - start)
    return ids.size(1) / min(times)


def outside_share(model: GPT, ids: torch.Tensor, new_tokens: int) -> float:
    """The share of decoding's time spent outside ``glassformer::decode_step`` and the output layer — the decoding
    loop's Python, the sampler, the embedding — over ``new_tokens`` tokens after the prompt (a run of n + 1 tokens
    less a run of 1, as ``decode_rate``), after a warm-up: the operator timed by a wrapper, the head by hooks."""
    inside, started = [0.0], [0.0]
    operator = decoder.decode_step

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return operator(*args, **kwargs)
        finally:
            inside[0] += time.perf_counter() - start

    def head_starts(module, args) -> None:
        started[0] = time.perf_counter()

    def head_ends(module, args, output) -> None:
        inside[0] += time.perf_counter() - started[0]

    hooks = [model.lm_head.register_forward_pre_hook(head_starts), model.lm_head.register_forward_hook(head_ends)]
    decoder.decode_step = timed

    def run(n: int) -> tuple[float, float]:  # (seconds outside, seconds in all)
        inside[0] = 0.0
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=n, eos_token_id=None)
        total = time.perf_counter() - start
        return total - inside[0], total

    try:
        run(2)
        (outside_1, total_1), (outside_n, total_n) = run(1), run(new_tokens + 1)
        return (outside_n - outside_1) / (total_n - total_1)
    finally:
        decoder.decode_step = operator
        for hook in hooks:
            hook.remove()


LONG_CONTEXT = 1500  # positions before the steps long_context_step times


def long_context_step(model: GPT, ids: torch.Tensor, dtype: torch.dtype, steps: int = 32) -> float:
    """Seconds of a greedy decoding step (median of ``steps``) at batch 1 after the prompt ``ids`` (1, n), with the
    key/value cache in ``dtype``: at long contexts attention reads as many bytes as the weights."""
    step = choose_step(model)
    cache = model.make_cache(1, ids.size(1) + steps + 1, dtype)
    times = []
    with torch.inference_mode():
        token = step(ids, None, cache).argmax(-1, keepdim=True)
        for _ in range(steps):
            start = time.perf_counter()
            token = step(token, None, cache).argmax(-1, keepdim=True)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--llama-python", default=str(Path(__file__).parent / ".venv-llama" / "bin" / "python"))
    args = parser.parse_args()
    print(runtime.env_line("cpu"))
    print(f"quantized kernels: {describe_kernels()}")
    speed = bandwidth()
    print(f"memory bandwidth (512 MiB copy, read + write): {speed / 1e9:.1f} GB/s")
    directory = resolve_shortcut("smollm2")
    gguf = next(directory.glob("*.gguf"))
    tokenizer = Tokenizer.from_pretrained(directory)
    prompt = tokenizer.encode(PROMPT)[:32]
    variants = {
        "glassformer float32": lambda: GPT.from_pretrained(directory),
        "glassformer int8": lambda: GPT.from_pretrained(directory, quantization=Quantization("int8")),
        "int8, int8 activations": lambda: GPT.from_pretrained(
            directory, quantization=Quantization("int8", activations="int8")
        ),
        "glassformer int4": lambda: GPT.from_pretrained(directory, quantization=Quantization("int4")),
    }
    if kernel_works("quantized_native_bf16"):
        variants["int4, bf16 activations"] = lambda: GPT.from_pretrained(
            directory, quantization=Quantization("int4", activations="bf16")
        )
    if "bf16" in runtime.native_precisions("cpu"):
        variants["glassformer bfloat16"] = lambda: GPT.from_pretrained(directory, dtype=torch.bfloat16)
    print(f"\nSmolLM2-135M-Instruct ({gguf.name}), prompt 32 tokens, greedy {args.new_tokens} new tokens, best of "
          f"{args.repeats}; threads {torch.get_num_threads()}")  # fmt: skip
    long_prompt = torch.tensor([tokenizer.encode(" ".join([PROMPT] * 30))[:512]])
    print(f"{'':24}{'batch':>6}{'tok/s':>9}{'MB read/token':>15}{'of bandwidth':>14}{'vs float32':>12}"
          f"{'prompt ms':>11}{'512-token prompt tok/s':>24}")  # fmt: skip
    base = {}
    for name, load in variants.items():
        model = load()
        for batch in (1, args.batch):
            ids = torch.tensor([prompt] * batch)
            rate, prompt_s = decode_rate(
                lambda n, m=model, i=ids: m.generate(i, max_new_tokens=n, eos_token_id=None),
                args.repeats, args.new_tokens, batch,
            )  # fmt: skip
            per_step = weight_bytes(model)  # one step reads the weights once for the whole batch
            base.setdefault(batch, rate)
            prefill = f"{prefill_rate(model, long_prompt, args.repeats):>24.0f}" if batch == 1 else ""
            print(f"{name:24}{batch:>6}{rate:>9.1f}{per_step / 1e6:>15.0f}{per_step * rate / batch / speed:>13.0%}"
                  f"{rate / base[batch]:>11.2f}x{prompt_s * 1e3:>11.0f}{prefill}")  # fmt: skip
        if name == "glassformer int4":
            share = outside_share(model, torch.tensor([prompt]), args.new_tokens)
            print(f"{'':24}batch 1: {share:.1%} of the time outside the decoding step's operator and the output layer")
        if name == "int4, bf16 activations":
            ids = torch.tensor([tokenizer.encode(" ".join([PROMPT] * 90))[:LONG_CONTEXT]])
            f32, bf16 = (long_context_step(model, ids, dtype) for dtype in (torch.float32, torch.bfloat16))
            print(f"{'':24}batch 1 after {ids.size(1)} tokens, ms a step: {f32 * 1e3:.2f} with a float32 key/value "
                  f"cache, {bf16 * 1e3:.2f} with bfloat16 (this variant's) ({f32 / bf16:.2f}x)")  # fmt: skip
        del model
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        hf = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf.name, dtype=torch.float32)
        for batch in (1, args.batch):
            ids = torch.tensor([prompt] * batch)
            rate, prompt_s = decode_rate(
                lambda n, i=ids, model=hf: model.generate(
                    i, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=2
                ),
                args.repeats, args.new_tokens, batch,
            )  # fmt: skip
            print(f"{'transformers float32':24}{batch:>6}{rate:>9.1f}{'':>15}{'':>14}{rate / base[batch]:>11.2f}x"
                  f"{prompt_s * 1e3:>11.0f}")  # fmt: skip
        del hf
    except ImportError:
        print("transformers: not installed (pip install transformers gguf accelerate)")
    if Path(args.llama_python).is_file():
        text, long_text = tokenizer.decode(prompt), tokenizer.decode(long_prompt[0].tolist())
        command = [args.llama_python, "-c", LLAMA, str(gguf), text, str(args.new_tokens),
                   str(torch.get_num_threads()), str(args.repeats), long_text]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode == 0:
            rate, prompt_s, prefill = (float(v) for v in result.stdout.split()[-3:])
            size = gguf.stat().st_size
            print(f"{'llama.cpp (same file)':24}{1:>6}{rate:>9.1f}{size / 1e6:>15.0f}{size * rate / speed:>13.0%}"
                  f"{rate / base[1]:>11.2f}x{prompt_s * 1e3:>11.0f}{prefill:>24.0f}")  # fmt: skip
        else:
            print(f"llama.cpp: failed ({result.stderr.strip().splitlines()[-1] if result.stderr.strip() else '?'})")
    else:
        print(f"llama.cpp: no {args.llama_python} (see the docstring to build llama-cpp-python there)")

    print("\nresident memory, each variant loaded in a fresh process (MiB):")
    print(f"{'':24}{'peak while loading':>20}{'after − before':>16}{'held by the model':>19}{'load s':>8}")
    sizes = {}
    for kind in ("float32", "int8", "int4"):
        out = subprocess.run([sys.executable, "-c", LOAD, kind], capture_output=True, text=True, check=True).stdout
        before, peak, after, emptied, seconds = (float(v) for v in out.split())
        sizes[kind] = after - emptied  # what deleting the model and its tokenizer gives back
        print(f"{'glassformer ' + kind:24}{peak / 2**20:>20.0f}{(after - before) / 2**20:>16.0f}"
              f"{sizes[kind] / 2**20:>19.0f}{seconds:>8.1f}")  # fmt: skip
    print(json.dumps({"int4 / float32 held by the model": round(sizes["int4"] / sizes["float32"], 3)}))


if __name__ == "__main__":
    main()
