"""Relative position bias (T5, Raffel et al. 2020): what a head adds to the attention logit of query i and key j
depends only on the distance j − i, put into a bucket; one learned scalar per (bucket, head).

    logit(i, j) = q_i · k_j + b[bucket(j − i), head]

Buckets (``num_buckets`` B, ``max_distance`` D): bidirectional (encoder) uses half of them for keys before the
query and half for keys after it; unidirectional (decoder, causal) only looks back, n = max(i − j, 0). With
E = B' / 2 exact buckets (B' = B/2 bidirectional, B unidirectional), a distance n < E has its own bucket, and a
larger one shares a logarithmically wider bucket:

    bucket(n) = n                                                     if n < E
              = min(E + ⌊ log(n / E) / log(D / E) · (B' − E) ⌋, B' − 1)   otherwise

plus B' for keys after the query in the bidirectional case. Distances beyond D all share the last bucket.

The bias is computed once per stack for its sequence lengths and added in every layer's self-attention (its
first layer's table is the stack's, as in T5). While decoding with a cache the queries sit at positions
``offset .. offset + q_len − 1``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def relative_bucket(
    relative: torch.Tensor, bidirectional: bool, num_buckets: int = 32, max_distance: int = 128
) -> torch.Tensor:
    """The bucket of each relative position ``j − i`` (an integer tensor of any shape), as the formula above."""
    bucket = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        bucket += (relative > 0).long() * num_buckets  # keys after the query: the upper half
        distance = relative.abs()
    else:
        distance = (-relative).clamp(min=0)  # only keys before (or at) the query count
    exact = num_buckets // 2
    # log-spaced beyond the exact range; the clamp keeps log() away from 0 where the exact bucket is used anyway
    log_ratio = torch.log(distance.clamp(min=exact).float() / exact) / math.log(max_distance / exact)
    large = exact + (log_ratio * (num_buckets - exact)).long()
    large = large.clamp(max=num_buckets - 1)
    return bucket + torch.where(distance < exact, distance, large)


class RelativePositionBias(nn.Module):
    """``forward(q_len, k_len, offset)`` -> the bias ``(1, heads, q_len, k_len)`` to add to attention logits.

    ``embedding.weight`` is the table b, ``(num_buckets, heads)`` (T5's ``relative_attention_bias``)."""

    def __init__(self, num_heads: int, num_buckets: int = 32, max_distance: int = 128, bidirectional: bool = True):
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.bidirectional = bidirectional
        self.embedding = nn.Embedding(num_buckets, num_heads)

    def forward(self, q_len: int, k_len: int, offset: int = 0) -> torch.Tensor:
        device = self.embedding.weight.device
        query = torch.arange(offset, offset + q_len, device=device)[:, None]  # i
        key = torch.arange(k_len, device=device)[None, :]  # j
        buckets = relative_bucket(key - query, self.bidirectional, self.num_buckets, self.max_distance)
        return self.embedding(buckets).permute(2, 0, 1)[None]  # (q, k, heads) -> (1, heads, q, k)

    def extra_repr(self) -> str:
        return f"buckets={self.num_buckets}, max_distance={self.max_distance}, bidirectional={self.bidirectional}"
