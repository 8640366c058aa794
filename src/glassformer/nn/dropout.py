"""Inverted dropout: during training each element is zeroed with probability p and the survivors are scaled by
1 / (1 - p), so the expected value is unchanged; in evaluation it is the identity.

    dropout(x) = x · m / (1 - p),   m_i ~ Bernoulli(1 - p)

On the CPU, drawing the mask is the largest single cost of a training step after the matrix products, so it is
drawn cheaply rather than with ``bernoulli_`` as ``torch.nn.functional.dropout`` does. Each 64-bit draw of the
generator gives four 15-bit uniform integers u (its four 16-bit words, sign bit cleared: the generator's top bit
is always 0), and

    m_i = [u_i >= t],   t = round(p · 2¹⁵),   so P(m_i = 0) = t / 2¹⁵ (p to within 1.5e-5)

with the survivors scaled by 1 / (1 − p) as the formula says (the expectation is then off by at most 2e-5).
``bench/kernels.py`` compares it with ``F.dropout``. On a GPU ``F.dropout`` draws and applies the mask in one
fused kernel, and is used there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    threshold = round(p * 2**15)  # t
    if threshold >= 2**15:
        return torch.zeros_like(x)
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_().view(torch.int16)[:n]
    keep = words.bitwise_and_(0x7FFF).ge_(threshold).view(x.shape)  # m: u >= t, as 0/1 in place
    scaled_mask = keep.to(x.dtype).mul_(1.0 / (1.0 - p))  # m / (1 - p)
    return x * scaled_mask


class Dropout(nn.Module):
    """``dropout`` as a module: active in ``train()`` mode only."""

    def __init__(self, p: float = 0.1):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
