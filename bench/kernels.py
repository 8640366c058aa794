"""Per-operation figures behind glassformer's fast paths, each against the torch call it replaces.

- dropout: ``glassformer.nn.dropout`` (mask from ``rand >= p``, built in place) vs ``torch.nn.functional.dropout``,
  forward + backward on a 12 x 6 x 256 x 256 attention matrix (nanoGPT shakespeare_char shape).
- linear: ``glassformer.nn.linear.linear`` vs ``F.linear`` over GPT-2 124M's 49 weight matrices in turn (so the
  weights stream from memory, as in decoding), bfloat16 at 1 and 8 rows; and float32 at 8 rows with the
  oneDNN-packed weights of ``packed_weights``.

    python bench/kernels.py
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from glassformer.nn.dropout import dropout
from glassformer.nn.linear import Linear, linear, packed_weights

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
    print(f"{name:<44} {baseline_ms:>10.2f} {ours_ms:>12.2f} {baseline_ms / ours_ms:>6.2f}x")


def main() -> None:
    torch.manual_seed(0)
    print(f"threads={torch.get_num_threads()}")
    print(f"{'operation':<44} {'torch (ms)':>10} {'glassformer':>12} {'ratio':>7}")

    x = torch.randn(12, 6, 256, 256, requires_grad=True)
    row(
        "dropout p=0.2, forward + backward",
        best_ms(lambda: F.dropout(x, 0.2).sum().backward()),
        best_ms(lambda: dropout(x, 0.2).sum().backward()),
    )

    with torch.no_grad():
        for dtype, rows in ((torch.bfloat16, 1), (torch.bfloat16, 8)):
            weights = [(torch.randn(n, k) * 0.02).to(dtype) for n, k in GPT2_SHAPES]
            inputs = {k: torch.randn(rows, k).to(dtype) for k in (768, 3072)}
            row(
                f"GPT-2 linears, {str(dtype).removeprefix('torch.')}, {rows} row(s)",
                best_ms(lambda: [F.linear(inputs[w.size(1)], w) for w in weights]),  # noqa: B023
                best_ms(lambda: [linear(inputs[w.size(1)], w) for w in weights]),  # noqa: B023
            )
        layers = torch.nn.ModuleList(Linear(k, n, bias=False) for n, k in GPT2_SHAPES)
        inputs = {k: torch.randn(8, k) for k in (768, 3072)}
        plain = best_ms(lambda: [layer(inputs[layer.in_features]) for layer in layers])
        with packed_weights(layers):
            packed = best_ms(lambda: [layer(inputs[layer.in_features]) for layer in layers])
        row("GPT-2 linears, float32, 8 rows, packed", plain, packed)


if __name__ == "__main__":
    main()
