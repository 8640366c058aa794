"""Rotary position embeddings (RoPE, Su et al. 2021), as Llama uses them.

Each head's query and key vectors are rotated by an angle that grows with the position, pair of dimensions by
pair of dimensions. With head dimension d and dimension i < d/2 paired with i + d/2 (the "rotate half" layout of
Hugging Face's Llama; llama.cpp pairs neighbours and permutes the Q/K weights to match, see
``glassformer.checkpoints.gguf``):

    θ_i          = base^(−2i / d)                                       base = rope_theta (10,000; SmolLM2 100,000)
    (x_i, x_{i+d/2}) at position m  ->  (x_i cos mθ_i − x_{i+d/2} sin mθ_i,  x_{i+d/2} cos mθ_i + x_i sin mθ_i)

written for the whole vector as RoPE(x, m) = x ⊙ cos(mθ) + rotate_half(x) ⊙ sin(mθ), with
rotate_half([a, b]) = [−b, a] and θ repeated for both halves. A rotation keeps lengths, and the score of a query at
position m with a key at position n depends only on the offset m − n: RoPE(q, m) · RoPE(k, n) = q · RoPE(k, n − m).
No position is added to the embeddings: attention alone sees where tokens are.
"""

from __future__ import annotations

import torch
from torch import nn


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[a, b] -> [−b, a]`` over the last dimension split in two halves."""
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE(x) = x ⊙ cos + rotate_half(x) ⊙ sin.

    Args:
        x: ``(batch, heads, seq, head_dim)`` queries or keys.
        cos, sin: ``(batch | 1, 1, seq, head_dim)`` from ``RotaryEmbedding`` (cast to x's dtype here, so the
            rotated vectors keep the dtype of the projection that made them, under autocast too).
    """
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin


class RotaryEmbedding(nn.Module):
    """The angles mθ_i for given positions. ``inv_freq`` θ_i is a buffer (not a weight: never saved)."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2 != 0:
            raise ValueError(f"rotary embeddings need an even head dimension, got {head_dim}")
        self.head_dim = head_dim
        self.base = base
        self.register_buffer("inv_freq", self.angles_per_position(), persistent=False)

    def angles_per_position(self) -> torch.Tensor:
        """θ_i = base^(−2i / d), ``(head_dim / 2,)`` in float32."""
        return 1.0 / (self.base ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim))

    def reset_buffers(self) -> None:
        """Recompute θ (after the module was built on the ``meta`` device and given memory)."""
        self.inv_freq = self.angles_per_position().to(self.inv_freq.device)

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``position_ids`` ``(batch | 1, seq)`` -> ``(cos, sin)``, each ``(batch | 1, 1, seq, head_dim)`` in ``dtype``.

        The angles are computed in float32 (float64 when ``dtype`` is) whatever ``dtype`` is: positions up to
        thousands times θ_0 = 1 lose their fraction in bfloat16."""
        precision = torch.float64 if dtype == torch.float64 else torch.float32
        inv_freq = self.inv_freq.to(precision)
        if precision == torch.float64:  # θ_i recomputed, not widened from float32
            inv_freq = 1.0 / (self.base ** (torch.arange(0, self.head_dim, 2, dtype=precision) / self.head_dim))
        angles = position_ids[..., None].to(precision) * inv_freq  # (batch, seq, head_dim / 2): m θ_i
        angles = torch.cat((angles, angles), dim=-1)[:, None]  # θ repeated for both halves, a heads axis
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}"
