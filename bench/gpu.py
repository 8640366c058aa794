"""GPU figures: GPT-2 124M training throughput and model FLOPs utilisation, and greedy decoding against transformers.

Training: GPT-2 124M (vocab padded to 50,304 as nanoGPT does), block 1024, bfloat16 autocast (float16 with a
gradient scaler where bfloat16 is not native), fused AdamW, the causal self-attention through
``scaled_dot_product_attention(is_causal=True)`` (flash attention); optionally ``torch.compile``. MFU as nanoGPT
counts it: (6 · parameters + 12 · layers · heads · head_dim · block) FLOPs per token, against the peak of a large
bfloat16 matrix product measured on this GPU (and against the data-sheet peak where ``--peak-tflops`` gives it).
nanoGPT reports ~29% MFU for this shape on one A100 (without its later optimizations).

Decoding: the same random GPT-2 124M weights written by transformers and loaded by both; greedy, no EOS stop, in
bfloat16 (both libraries), batch 1 and 8, best of ``--repeats`` alternating runs.

    python bench/gpu.py [--batch 16] [--steps 20] [--compile] [--peak-tflops 989]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings

import torch
import torch.nn.functional as F

from glassformer import runtime
from glassformer.models.gpt import GPT, GPTConfig
from glassformer.training.loop import TrainConfig
from glassformer.training.optimizers import make_optimizer


def measured_peak_tflops(dtype: torch.dtype, size: int = 8192, repeats: int = 10) -> float:
    a, b = (torch.randn(size, size, device="cuda", dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def train(args: argparse.Namespace, precision: str) -> None:
    placement = runtime.place("cuda", precision)
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=50304, max_seq_length=args.block, dropout=0.0, attention_dropout=0.0)
    model = GPT(config).to(placement.device)
    optimizer = make_optimizer(
        model,
        TrainConfig(lr=6e-4, weight_decay=0.1, betas=(0.9, 0.95)),
        fused=runtime.fused_optimizer_works(placement.device),
    )
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    step_model = torch.compile(model) if args.compile else model
    x = torch.randint(0, 50257, (args.batch, args.block + 1), device="cuda")
    inputs, targets = x[:, :-1], x[:, 1:]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=placement.dtype):
            loss = F.cross_entropy(step_model(inputs).flatten(0, 1).float(), targets.flatten())
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    tokens_per_s = args.batch * args.block / seconds
    parameters = sum(p.numel() for p in model.parameters())
    flops_per_token = 6 * parameters + 12 * config.num_layers * config.num_heads * config.head_dim * args.block
    achieved = flops_per_token * tokens_per_s / 1e12
    peak = measured_peak_tflops(placement.dtype)
    line = (
        f"training GPT-2 124M {precision}{' compiled' if args.compile else ''}: batch {args.batch} x {args.block}, "
        f"{seconds * 1e3:.1f} ms/step, {tokens_per_s:,.0f} tokens/s, {achieved:.0f} TFLOP/s, "
        f"MFU {100 * achieved / peak:.1f}% of the measured {peak:.0f} TFLOP/s matmul peak"
    )
    if args.peak_tflops:
        line += f", {100 * achieved / args.peak_tflops:.1f}% of the data sheet's {args.peak_tflops:.0f}"
    print(line, flush=True)


def decode(args: argparse.Namespace, precision: str) -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    dtype = runtime.PRECISIONS[precision]
    directory = tempfile.mkdtemp(prefix="gpt2-124m-")
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config()).save_pretrained(directory)
    hf = transformers.GPT2LMHeadModel.from_pretrained(directory, dtype=dtype).to("cuda").eval()
    ours = GPT.from_pretrained(directory, dtype=dtype).to("cuda")
    options = dict(max_new_tokens=args.new_tokens, eos_token_id=None, pad_token_id=0)
    print(f"{'batch':>5} {'dtype':>6} {'transformers tok/s':>19} {'glassformer tok/s':>18} {'ratio':>6}  notes")
    for batch in (1, 8):
        ids = torch.randint(0, 50257, (batch, args.prompt_tokens), generator=torch.Generator().manual_seed(batch))
        ids = ids.to("cuda")
        best = {"hf": float("inf"), "ours": float("inf")}
        outputs = {}
        with torch.no_grad():
            for _ in range(args.repeats):
                for name, run in (
                    ("hf", lambda: hf.generate(ids, do_sample=False, **options)),  # noqa: B023
                    ("ours", lambda: ours.generate(ids, **options)),  # noqa: B023
                ):
                    torch.cuda.synchronize()
                    start = time.perf_counter()
                    outputs[name] = run()
                    torch.cuda.synchronize()
                    best[name] = min(best[name], time.perf_counter() - start)
        tokens = batch * args.new_tokens
        same = (outputs["hf"] == outputs["ours"]).all(0).long().cumprod(0).sum() - args.prompt_tokens
        print(
            f"{batch:>5} {precision:>6} {tokens / best['hf']:>19.1f} {tokens / best['ours']:>18.1f} "
            f"{best['hf'] / best['ours']:>5.2f}x  first {int(same)} of {args.new_tokens} greedy tokens equal"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--block", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also torch.compile the training step")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's data-sheet dense bf16 peak")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-decoding", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    print(runtime.env_line("auto"), flush=True)
    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py needs a CUDA GPU: torch.cuda.is_available() is False here")
    precision = runtime.place("cuda", "auto").precision
    torch.backends.cuda.matmul.allow_tf32 = True  # float32 leftovers (the optimizer) on tensor cores
    train(argparse.Namespace(**{**vars(args), "compile": False}), precision)
    torch.cuda.empty_cache()
    if args.compile:
        train(args, precision)
        torch.cuda.empty_cache()
    if not args.skip_decoding:
        decode(args, precision)


if __name__ == "__main__":
    main()
