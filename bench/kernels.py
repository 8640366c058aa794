"""Per-operation figures behind glassformer's fast paths, each against the torch call it replaces.

- loss: ``glassformer.training.losses.fused_label_smoothed_cross_entropy`` vs ``F.cross_entropy(label_smoothing=0.1)``,
  forward + backward over 3,000 target tokens and an 8,000-token vocabulary.
- dropout: ``glassformer.nn.dropout`` (mask from 15-bit integers, four per random draw) vs
  ``torch.nn.functional.dropout``, forward + backward on a 12 x 6 x 256 x 256 attention matrix (nanoGPT
  shakespeare_char shape).
- attention: ``glassformer.nn.scaled_dot_product_attention`` (the reference formula, which
  ``MultiHeadAttention`` runs when training on the CPU with attention dropout or in bfloat16) vs
  ``torch.nn.functional.scaled_dot_product_attention``, forward + backward with a causal and padding mask, in
  float32 and under bfloat16 autocast, with and without attention dropout, at the ``small`` translation preset's
  shape (64 sentences x 4 heads x 40 tokens x 64) and nanoGPT shakespeare_char's (12 x 6 x 256 x 64).
- linear: glassformer's ``Linear`` while decoding (inside ``packed_weights``, as ``generate`` runs it: oneDNN-packed
  weights or reordered half-precision products, whichever this CPU gains from) vs ``F.linear``, over GPT-2 124M's
  49 weight matrices in turn (so the weights stream from memory, as in decoding), float32 and bfloat16, 1 and 8
  rows.
- int4 product: ``glassformer::quantized_linear`` (this build's path: ``glassformer env``) vs torch's
  ``_weight_int4pack_mm_for_cpu``, one 150,000 x 576 weight in groups of 32 (43 MB: it streams from memory), 1 and
  8 rows; with the bytes read per second against a 512 MiB read here. ``GLASSFORMER_CPU=avx2 python
  bench/kernels.py`` gives the AVX2 path's row on an AVX512 machine. Then, on one thread, the nanoseconds per weight
  row of that weight (from memory) against its first 6,000 rows (held in the cache): what bounds the product.
- bf16 activations (where the build multiplies bfloat16: AVX512-BF16): the same weight, 8 and 64 rows, the kernel's
  bfloat16 products vs its 16-bit ones (``quantized_linear(..., bf16)``, ``csrc/products.h``), alternated.
- long-prompt tile: a 512-row prompt times a dequantized tile of 455 x 576 weights (``quantized_linear_tiled``):
  oneDNN's product with a plain weight vs ``F.linear``.
- bf16 kernel vs bf16 tiles (where the build multiplies bfloat16): every matrix of a SmolLM2-135M-shaped stack
  (random int4 weights), 128-512 rows of x, ``quantized_linear_tiled`` in bfloat16 vs the kernel (where
  ``BF16_KERNEL_ROWS`` hands over).
- translation's beam search step (the demo model's shapes: 60 sentences x 4 beams, an 8,000-token vocabulary):
  the candidates, ``log_softmax`` + add + ``topk`` over beams x vocabulary vs ``search.beam_candidates``
  (``glassformer::top_log_probs``); and where the kernel multiplies bfloat16, the float output layer (240 x 256 ->
  8,000, packed for oneDNN) in float32 vs with ``bf16_products`` (a model quantized with bfloat16 activations).
- the fused decoding step on GPT-2's layout: a GPT-2-124M-shaped model (random weights) quantized to int4, greedy
  decoding at batch 1, tokens/s with the modules vs with ``glassformer::decode_step``.
- a prompt riding in the decoding step (the server's ``DecodingStep.mixed``): the same model, one slot decoding beside
  a 63-token prompt chunk after 896 positions — the chunk through the modules and then the decoding step (apart) vs
  one mixed step (riding); 16-bit activations, and bfloat16 where the kernel multiplies them.

    python bench/kernels.py
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from glassformer import runtime
from glassformer.backends.cpu import extension, onednn
from glassformer.backends.cpu.onednn import MAX_PACKED_HALF_ROWS, min_packed_rows, reorder_half_precision
from glassformer.backends.cpu.quantized import native_linear, probe_weight, torch_int4_layout, torch_linear
from glassformer.backends.kernels import kernel_works
from glassformer.generation import fused_step
from glassformer.generation.config import GenerationConfig
from glassformer.generation.sampler import Sampling
from glassformer.generation.search import beam_candidates
from glassformer.generation.step import choose_step
from glassformer.masks import causal_mask
from glassformer.models.gpt import GPT, GPTConfig
from glassformer.nn.attention import scaled_dot_product_attention
from glassformer.nn.dropout import dropout
from glassformer.nn.linear import Linear, packed_weights
from glassformer.nn.quantization import QuantizedWeight, quantized_linear_tiled
from glassformer.training.losses import fused_label_smoothed_cross_entropy

GPT2_SHAPES = [(2304, 768), (768, 768), (3072, 768), (768, 3072)] * 12 + [(50257, 768)]


def best_ms(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def row(name: str, baseline_ms: float, ours_ms: float) -> None:
    print(f"{name:<48} {baseline_ms:>10.2f} {ours_ms:>12.2f} {baseline_ms / ours_ms:>6.2f}x")


def main() -> None:
    print(runtime.env_line(), flush=True)
    torch.manual_seed(0)
    print(f"threads={torch.get_num_threads()}")
    print(f"{'operation':<48} {'torch (ms)':>10} {'glassformer':>12} {'ratio':>7}")

    x = torch.randn(12, 6, 256, 256, requires_grad=True)
    row(
        "dropout p=0.2, forward + backward",
        best_ms(lambda: F.dropout(x, 0.2).sum().backward()),
        best_ms(lambda: dropout(x, 0.2).sum().backward()),
    )

    logits = torch.randn(3000, 8000, requires_grad=True)  # a translation batch's target tokens x an 8k vocabulary
    target = torch.randint(0, 8000, (3000,))
    row(
        "label-smoothed loss 3000 x 8000, forward + backward",
        best_ms(lambda: F.cross_entropy(logits, target, label_smoothing=0.1).backward()),
        best_ms(lambda: fused_label_smoothed_cross_entropy(logits, target, 0.1)[0].backward()),
    )

    for batch, heads, length, d_k in ((64, 4, 40, 64), (12, 6, 256, 64)):
        q, k, v = (torch.randn(batch, heads, length, d_k, requires_grad=True) for _ in range(3))
        lengths = torch.randint(length // 2, length + 1, (batch,))  # right padding, as in a batch of sentences
        keys_present = torch.arange(length) < lengths[:, None]  # (batch, length)
        mask = causal_mask(length) & keys_present[:, None, None, :]  # bool, True = may attend

        for dtype in (torch.float32, torch.bfloat16):
            for p in (0.0, 0.1):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                    row(
                        f"attention {batch}x{heads}x{length}, {str(dtype).removeprefix('torch.')}, dropout {p}",
                        best_ms(lambda: F.scaled_dot_product_attention(q, k, v, mask, p).sum().backward()),  # noqa: B023
                        best_ms(lambda: scaled_dot_product_attention(q, k, v, mask, p)[0].sum().backward()),  # noqa: B023
                    )

    with torch.no_grad():
        print(
            f"linears below: half-precision reordering {'on' if reorder_half_precision() else 'off'} (AMX), "
            f"packed from {min_packed_rows()} row(s) (half precision up to {MAX_PACKED_HALF_ROWS})"
        )
        for dtype in (torch.float32, torch.bfloat16):
            layers = torch.nn.ModuleList(Linear(k, n, bias=False) for n, k in GPT2_SHAPES).to(dtype)
            for rows in (1, 8):
                inputs = {k: torch.randn(rows, k).to(dtype) for k in (768, 3072)}
                plain = best_ms(lambda: [F.linear(inputs[m.in_features], m.weight) for m in layers])  # noqa: B023
                with packed_weights(layers):  # as generate() does: packed where this CPU gains from it
                    ours = best_ms(lambda: [m(inputs[m.in_features]) for m in layers])  # noqa: B023
                row(f"GPT-2 linears, {str(dtype).removeprefix('torch.')}, {rows} row(s), decoding", plain, ours)
        quantized_rows()
        beam_search_rows()
    gpt2_fused_step()
    gpt2_mixed_step()


def beam_search_rows(sentences: int = 60, beams: int = 4, vocab: int = 8000, d_model: int = 256) -> None:
    """A translation beam search step's candidates and output layer (``glassformer evaluate``'s work per step)."""
    logits, running = torch.randn(sentences * beams, vocab) * 3, torch.randn(sentences, beams)
    sampling = Sampling.of([GenerationConfig(num_beams=beams)] * (sentences * beams))

    def full_ranking():  # what beam search did before: every beam's every token ranked
        total = (F.log_softmax(logits, -1).view(sentences, beams, vocab) + running[..., None]).view(sentences, -1)
        return total.topk(2 * beams)

    ours = best_ms(lambda: beam_candidates(logits, None, 0, running, sampling), 20)
    row(f"beam candidates {sentences}x{beams} beams x {vocab}", best_ms(full_ranking, 20), ours)
    if not kernel_works("quantized_native_bf16"):
        return
    head, hidden = Linear(d_model, vocab), torch.randn(sentences * beams, d_model)
    with packed_weights(head):
        float32 = best_ms(lambda: head(hidden), 20)
        head.bf16_products = True
        row(f"output layer {sentences * beams}x{d_model}->{vocab}: fp32 vs bf16_products", float32,
            best_ms(lambda: head(hidden), 20))  # fmt: skip


def quantized_rows() -> None:
    """The int4 product and the long-prompt tile (module docstring)."""
    if not extension.load():
        print(f"int4 product: glassformer's operators are not built ({extension.why_not[-1]})")
        return
    codes, scales, offsets, _ = probe_weight("int4", 150_000, 576, 32)
    layout = torch_int4_layout(codes, scales, offsets)
    nbytes = sum(t.numel() * t.element_size() for t in (codes, scales, offsets))
    big = torch.ones(128 << 20)
    read = big.numel() * 4 / (best_ms(big.sum) / 1e3)
    path = torch.ops.glassformer.simd()
    print(f"int4 product below: glassformer's {path} path; a 512 MiB read: {read / 1e9:.1f} GB/s")
    for rows in (1, 8):
        x = torch.randn(rows, 576)
        theirs = best_ms(lambda: torch_linear(x, codes, scales, 32, None, layout))  # noqa: B023
        ours = best_ms(lambda: native_linear(x, codes, scales, offsets, 32))  # noqa: B023
        row(f"int4 150000x576, {rows} row(s) ({nbytes / (ours / 1e3) / 1e9:.1f} GB/s)", theirs, ours)
    memory_or_cache(codes, scales, offsets)
    if torch.ops.glassformer.bf16_dot():
        for rows in (8, 64):
            x = torch.randn(rows, 576)
            sixteen, bf16 = [], []
            for _ in range(3):  # alternated: this machine's speed drifts between runs
                sixteen.append(best_ms(lambda: native_linear(x, codes, scales, offsets, 32)))  # noqa: B023
                bf16.append(best_ms(lambda: native_linear(x, codes, scales, offsets, 32, bf16=True)))  # noqa: B023
            row(f"int4 150000x576, {rows} rows: 16-bit vs bf16 activations", min(sixteen), min(bf16))
        bf16_kernel_or_tiles()
    x, tile = torch.randn(512, 576), torch.randn(455, 576)
    if onednn.packs(torch.float32):
        row("long-prompt tile 512 x 576 by 455 x 576 (oneDNN)", best_ms(lambda: F.linear(x, tile)),
            best_ms(lambda: onednn.packed_linear(x, tile, None)))  # fmt: skip


def memory_or_cache(codes: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor, rows: int = 6000) -> None:
    """One row of x on one thread: nanoseconds per weight row of the 150,000 x 576 int4 weight (it streams from
    memory) and of its first ``rows`` rows (2.2 MB: they stay in the cache from one call to the next). Near equal
    where the kernel's instructions, not memory, bound the product."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x, part = torch.randn(1, 576), (codes[:rows], scales[:rows], offsets[:rows])
        memory = best_ms(lambda: native_linear(x, codes, scales, offsets, 32)) * 1e6 / codes.size(0)
        cache = best_ms(lambda: [native_linear(x, *part, 32) for _ in range(20)]) * 1e6 / (20 * rows)
    finally:
        torch.set_num_threads(threads)
    row("int4 1 row, 1 thread: ns a weight row, memory vs cache", memory, cache)


def bf16_kernel_or_tiles() -> None:
    """Where BF16_KERNEL_ROWS hands over: every matrix of a SmolLM2-135M-shaped stack (30 layers, random int4
    weights, 66 MB: they stream from memory as in a prompt's pass), x of 128-1024 rows, bfloat16 activations — the
    tiles in bfloat16 (quantized_linear_tiled) vs the kernel, alternated."""
    weights = []
    for n, k in [(960, 576), (576, 576), (3072, 576), (576, 1536)] * 30:
        weight = QuantizedWeight(n, k, "int4", 32)
        weight.codes, weight.scales, weight.offsets, _ = probe_weight("int4", n, k, 32, seed=len(weights))
        weights.append(weight)
    for rows in (128, 256, 512, 768, 1024):
        x = {k: torch.randn(rows, k) for k in (576, 1536)}

        def tiled(x: dict = x) -> list:
            return [quantized_linear_tiled(x[w.in_features].bfloat16(), w) for w in weights]

        def kernel_products(x: dict = x) -> list:
            return [native_linear(x[w.in_features], w.codes, w.scales, w.offsets, 32, bf16=True) for w in weights]

        tiles, kernel = [], []
        for _ in range(2):  # alternated: this machine's speed drifts between runs
            tiles.append(best_ms(tiled, 1))
            kernel.append(best_ms(kernel_products, 1))
        row(f"SmolLM2 shapes, {rows} rows, bf16: tiles vs kernel", min(tiles), min(kernel))


def gpt2_fused_step(new_tokens: int = 64) -> None:
    """GPT-2's layout, int4, batch 1: tokens/s with the modules and with the fused step."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(dropout=0.0, attention_dropout=0.0)).eval().quantize("int4")
    ids = torch.randint(0, model.config.vocab_size, (1, 32))

    def rate() -> float:  # decoding alone: n tokens over T(n + 1) - T(1)
        with torch.inference_mode():
            first = best_ms(lambda: model.generate(ids, max_new_tokens=1, eos_token_id=None), 2)
            return new_tokens / ((best_ms(lambda: model.generate(ids, max_new_tokens=new_tokens + 1,
                                                                 eos_token_id=None), 2) - first) / 1e3)  # fmt: skip

    fused = rate()
    real, fused_step.step = fused_step.step, lambda *args: None  # the modules serve every step
    try:
        modules = rate()
    finally:
        fused_step.step = real
    print(f"{'GPT-2 124M shape, int4, batch 1: tok/s':<48} {modules:>10.1f} {fused:>12.1f} {fused / modules:>6.2f}x"
          "   (modules | fused decoding step)")  # fmt: skip


def gpt2_mixed_step(chunk: int = 63, past: int = 896) -> None:
    """A server's step with a prompt riding (``DecodingStep.mixed``): a GPT-2-124M-shaped int4 model, one slot
    decoding beside a prompt whose next ``chunk`` tokens come after ``past`` positions — read in a pass of its own
    through the modules and then the decoding step (the scheduler without riding), against one mixed step; with
    16-bit activations, and bfloat16 ones where the kernel multiplies them."""
    for activations in (None, "bf16") if kernel_works("quantized_native_bf16") else (None,):
        torch.manual_seed(0)
        model = GPT(GPTConfig(dropout=0.0, attention_dropout=0.0)).eval().quantize("int4", activations=activations)
        step, ids = choose_step(model), torch.randint(0, model.config.vocab_size, (past + chunk,)).tolist()
        if step.kind != "fused":
            print("mixed step: the fused decoding step does not run here")
            return
        with torch.inference_mode(), packed_weights(model):
            cache = model.make_slot_cache(2, past + chunk + 1)
            for slot, prompt in ((0, ids[:40]), (1, ids[:past])):
                cache.reserve(slot, len(prompt) + chunk + 1)
                model(torch.tensor([prompt]), cache=cache.view([slot]))
            apart, riding = mixed_step_timings(model, step, cache, ids, past)
        row(f"{chunk}-token chunk after {past}, {activations or '16-bit'}: apart vs riding", apart, riding)


def mixed_step_timings(model: GPT, step, cache, ids: list[int], past: int) -> tuple[float, float]:
    """ms of slot 1's tokens ``ids[past:]`` read through the modules and then slot 0's decoding step, and of both
    as one mixed step; the slots' lengths put back before each run."""

    def apart() -> None:
        cache.lengths[:] = [40, past]
        model(torch.tensor([ids[past:]]), cache=cache.view([1]), last_token_only=True)
        view = cache.view([0])
        step(torch.tensor([[5]]), view.attention_mask(1), view)

    def riding() -> None:
        cache.lengths[:] = [40, past]
        step.mixed([(0, [5]), (1, ids[past:])], cache)

    return best_ms(apart, 3), best_ms(riding, 3)


if __name__ == "__main__":
    main()
