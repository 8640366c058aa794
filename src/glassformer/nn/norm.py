"""Layer normalization over the last dimension.

    LN(x) = γ ⊙ (x − μ) / sqrt(σ² + ε) + β,   μ, σ² the mean and *biased* variance of x's last dimension

This is the formula of the paper and of ``torch.nn.LayerNorm``. The guide's worked example used a different
normalization — the *unbiased* standard deviation with ε outside the root — kept here only as
``guide_layer_norm`` for teaching, never used by a model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def layer_norm_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """The formula, step by step: the reference that ``LayerNorm``'s fused kernel is tested against."""
    mean = x.mean(-1, keepdim=True)  # μ
    var = x.var(-1, keepdim=True, unbiased=False)  # σ², biased
    out = weight * (x - mean) / torch.sqrt(var + eps)
    return out if bias is None else out + bias


def guide_layer_norm(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """The guide's teaching variant: γ (x − μ) / (s + ε) + β with s the *unbiased* standard deviation.

    On x = [2, -1, 3, 0] it gives the guide's [0.5477, -1.0954, 1.0954, -0.5477]; the standard layer norm gives
    [0.6325, -1.2649, 1.2649, -0.6325]. Differs from ``LayerNorm`` by a factor sqrt((n-1)/n) — do not use in a model.
    """
    mean = x.mean(-1, keepdim=True)
    std = x.std(-1, keepdim=True)  # unbiased: divides by n - 1
    return gamma * (x - mean) / (std + eps) + beta


class LayerNorm(nn.Module):
    """``(..., d_model)`` -> same shape. ``weight`` is γ (init 1), ``bias`` is β (init 0), ``eps`` inside the root.

    Runs ``torch.nn.functional.layer_norm``, which computes ``layer_norm_reference`` in one kernel.
    """

    def __init__(self, d_model: int, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)
