"""Attention masks, one convention everywhere: a boolean tensor, **True = may attend**.

This is the convention of ``torch.nn.functional.scaled_dot_product_attention``. A mask broadcasts
against attention scores of shape ``(batch, heads, q_len, k_len)``: entry ``[b, h, i, j]`` says whether
query ``i`` may look at key ``j``.

The guide mixed two conventions (its padding mask used 1 = blocked, its look-ahead mask True = allowed)
and combined them with ``max``, which let the decoder see the future and hid the past. Here both masks
say "allowed" and are combined with ``&``.
"""

from __future__ import annotations

import torch


def padding_mask(tokens: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """Keys that are real tokens.

    Args:
        tokens: ``(batch, seq)`` token ids.
        pad_token_id: the id used for padding.

    Returns:
        ``(batch, 1, 1, seq)`` bool, True where ``tokens != pad_token_id``; broadcasts over heads and queries.
    """
    if tokens.dim() != 2:
        raise ValueError(f"padding_mask expects token ids of shape (batch, seq), got shape {tuple(tokens.shape)}")
    return (tokens != pad_token_id)[:, None, None, :]


def causal_mask(size: int, device: torch.device | str | None = None, past: int = 0) -> torch.Tensor:
    """The look-ahead mask: query ``i`` may attend to keys ``j <= i``. With ``past`` positions already cached, the
    ``size`` new queries sit at positions ``past .. past + size - 1`` and see every cached key and the new ones up
    to their own (the one mask of every cache-using forward pass).

    Returns:
        ``(size, past + size)`` bool, lower triangular from the diagonal ``past`` (included).
    """
    if size < 1 or past < 0:
        raise ValueError(f"causal_mask needs a size of at least 1 and a past of at least 0, got {size} and {past}")
    return torch.ones(size, past + size, dtype=torch.bool, device=device).tril(past)


def decoder_self_attention_mask(tgt: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """Causal mask combined with target padding: ``(batch, 1, tgt_len, tgt_len)`` bool.

    ``causal & padding``: a target position sees earlier (and its own) real tokens only.
    """
    return causal_mask(tgt.size(1), device=tgt.device) & padding_mask(tgt, pad_token_id)
