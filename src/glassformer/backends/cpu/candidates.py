"""Beam search's candidates of a step: each row's ``k`` best log-probabilities and their tokens,

    log softmax(z)_i = z_i − log Σ_j e^(z_j)        the k largest per row of logits z (rows, vocab), best first

``reference`` computes them as written (``log_softmax``, then ``topk``); ``top_log_probs`` runs
``glassformer::top_log_probs`` (``csrc/candidates.h``), which reads each row once and never writes the full
``(rows, vocab)`` log-probabilities (the kernel ``top_log_probs``, probed against the reference). A row's log-softmax
keeps its order, so its k best are its k largest logits less one number. ``glassformer.generation.search`` takes
them where no penalty or constraint changes the scores.
"""

from __future__ import annotations

import torch

from glassformer.backends.cpu import extension
from glassformer.backends.kernels import kernel_works


def reference(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, tokens)`` ``(..., k)``: the ``k`` largest log-softmax values of each row of ``logits``
    ``(..., vocab)``, best first, in float32."""
    return torch.log_softmax(logits.float(), -1).topk(k, -1)


def top_log_probs(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``reference``'s answer, through the kernel where it serves these logits (float32 on the CPU, and the kernel
    works here), else through the reference. A row holding a NaN gets NaN values in both."""
    if logits.dtype == torch.float32 and logits.device.type == "cpu" and kernel_works("top_log_probs"):
        return torch.ops.glassformer.top_log_probs(logits, k)
    return reference(logits, k)


def probe() -> None:
    """The kernel must give the reference's tokens and values (to 1e-5) on rows of a few lengths (a remainder past
    the chunks of 16 included), with a NaN row flagged."""
    if not extension.load():
        raise RuntimeError(extension.why_not[-1])
    generator = torch.Generator().manual_seed(0)
    for vocab, k in ((37, 5), (1000, 8), (64, 64)):
        logits = torch.randn(6, vocab, generator=generator) * 4
        values, tokens = torch.ops.glassformer.top_log_probs(logits, k)
        expected, expected_tokens = reference(logits, k)
        if not torch.equal(tokens, expected_tokens) or (values - expected).abs().max() > 1e-5:
            raise RuntimeError(f"glassformer's top_log_probs differs from log_softmax + topk ({vocab} logits, k={k})")
    logits[2, 7] = float("nan")
    if not torch.ops.glassformer.top_log_probs(logits, 3)[0][2].isnan().all():
        raise RuntimeError("glassformer's top_log_probs does not flag a row holding a NaN")
