"""Normalization over the last dimension: layer norm (the paper, GPT-2, BERT) and RMS norm (Llama).

    LN(x)  = γ ⊙ (x − μ) / sqrt(σ² + ε) + β,   μ, σ² the mean and *biased* variance of x's last dimension
    RMS(x) = γ ⊙ x / sqrt(mean(x²) + ε)       no centring, no β (Zhang & Sennrich 2019)

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


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The RMS-norm formula step by step, in float32 as Llama computes it, cast back to x's dtype."""
    x32 = x.float()
    rms = torch.sqrt(x32.pow(2).mean(-1, keepdim=True) + eps)  # sqrt(mean(x²) + ε)
    return weight * (x32 / rms).to(x.dtype)


class RMSNorm(nn.Module):
    """``(..., d_model)`` -> same shape. ``weight`` is γ (init 1); there is no bias.

    The statistics are taken in float32 (also for bfloat16 inputs), then ``weight ⊙ normalized`` in the input's
    dtype, as Llama does; ``rms_norm_reference`` is the formula written out and the test's reference.
    """

    def __init__(self, d_model: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)  # one kernel
        return rms_norm_reference(x, self.weight, self.eps)


NORMS = ("layernorm", "rmsnorm")


def make_norm(kind: str, d_model: int, eps: float) -> LayerNorm | RMSNorm:
    """``"layernorm"`` -> ``LayerNorm``, ``"rmsnorm"`` -> ``RMSNorm``: the one switch every layer uses."""
    if kind == "layernorm":
        return LayerNorm(d_model, eps)
    if kind == "rmsnorm":
        return RMSNorm(d_model, eps)
    raise ValueError(f"unknown norm {kind!r}; choose one of {list(NORMS)}")
