"""Token embeddings and position information.

    token embedding:   e_i = E[i, :] · sqrt(d_model)
    sinusoidal:        PE(pos, 2i)   = sin(pos / 10000^(2i / d_model))
                       PE(pos, 2i+1) = cos(pos / 10000^(2i / d_model))
    learned:           P[pos, :], a trained table

Both position modules share one interface: ``forward(x, offset=0)`` returns ``x`` plus the encoding of
positions ``offset .. offset + seq - 1``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from glassformer.nn.quantization import QuantizedWeight


class TokenEmbedding(nn.Module):
    """Lookup table E of shape ``(vocab_size, d_model)``, the output scaled by sqrt(d_model) as in the paper
    (``scale=False`` for models such as GPT-2 and BERT that do not scale).

    ``forward(ids)``: ``(batch, seq)`` int -> ``(batch, seq, d_model)``.
    """

    def __init__(self, vocab_size: int, d_model: int, padding_idx: int | None = None, scale: bool = True):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model, padding_idx=padding_idx)
        self.scale = math.sqrt(d_model) if scale else 1.0
        self.quantized: QuantizedWeight | None = None  # the table as integer codes (``quantize``)

    @property
    def weight(self) -> nn.Parameter | None:
        return self.embedding.weight

    def quantize(self, kind: str, group_size: int | None = None) -> None:
        """Store E as ``kind`` codes (``glassformer.nn.quantization``); a lookup dequantizes only the rows it reads."""
        self.set_quantized(QuantizedWeight.from_float(self.embedding.weight, kind, group_size))

    def set_quantized(self, table: QuantizedWeight) -> None:
        self.quantized = table
        if self.embedding.weight is not None:
            del self.embedding.weight
            self.embedding.register_parameter("weight", None)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.quantized is not None:
            return self.quantized.lookup(ids) * self.scale
        return self.embedding(ids) * self.scale


def sinusoidal_encoding(num_positions: int, d_model: int) -> torch.Tensor:
    """The paper's table, ``(num_positions, d_model)``. Column ``2i`` is sin, ``2i+1`` cos, both with frequency
    1 / 10000^(2i / d_model) — ``2i`` is the even column index itself (the guide's cell 17 loop doubled it).
    An odd ``d_model`` gets one more sine column than cosine columns."""
    position = torch.arange(num_positions, dtype=torch.float64)[:, None]  # (pos, 1)
    even = torch.arange(0, d_model, 2, dtype=torch.float64)  # the 2i's
    angle = position / 10000.0 ** (even / d_model)  # (pos, ceil(d/2))
    pe = torch.zeros(num_positions, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle[:, : d_model // 2])
    return pe.float()


def _check_positions(seq_len: int, offset: int, max_seq_length: int) -> None:
    if offset + seq_len > max_seq_length:
        raise ValueError(
            f"positions up to {offset + seq_len} requested but max_seq_length is {max_seq_length}; "
            "shorten the input or build the model with a larger max_seq_length"
        )


class PositionalEncoding(nn.Module):
    """Fixed sinusoidal positions. ``forward(x)``: ``(batch, seq, d_model)`` -> ``x + PE[:seq]``.

    The table is a non-persistent buffer: it is recomputed, never stored in checkpoints.
    """

    def __init__(self, d_model: int, max_seq_length: int = 5000):
        super().__init__()
        self.max_seq_length, self.d_model = max_seq_length, d_model
        self.register_buffer("pe", sinusoidal_encoding(max_seq_length, d_model), persistent=False)

    def reset_buffers(self) -> None:
        """Recompute the table (after the module was built on the ``meta`` device and given memory)."""
        self.pe = sinusoidal_encoding(self.max_seq_length, self.d_model).to(self.pe.device)

    def forward(self, x: torch.Tensor, offset: int = 0, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """``position_ids`` ``(batch, seq)``, when given, replaces ``offset .. offset + seq - 1``."""
        if position_ids is None:
            _check_positions(x.size(1), offset, self.max_seq_length)
            return x + self.pe[offset : offset + x.size(1)].to(x.dtype)
        _check_positions(int(position_ids.max()) + 1, 0, self.max_seq_length)
        return x + self.pe[position_ids].to(x.dtype)


class LearnedPositionalEmbedding(nn.Module):
    """A trained table P of shape ``(max_seq_length, d_model)`` (as GPT-2 and BERT).
    ``forward(x)``: ``(batch, seq, d_model)`` -> ``x + P[:seq]``."""

    def __init__(self, d_model: int, max_seq_length: int):
        super().__init__()
        self.max_seq_length = max_seq_length
        self.embedding = nn.Embedding(max_seq_length, d_model)

    @property
    def weight(self) -> nn.Parameter:
        return self.embedding.weight

    def forward(self, x: torch.Tensor, offset: int = 0, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """``position_ids`` ``(batch, seq)``, when given, replaces ``offset .. offset + seq - 1`` (left-padded
        batches number each row's positions from its first real token)."""
        if position_ids is None:
            _check_positions(x.size(1), offset, self.max_seq_length)
            return x + self.embedding.weight[offset : offset + x.size(1)]
        _check_positions(int(position_ids.max()) + 1, 0, self.max_seq_length)
        return x + self.embedding(position_ids)


POSITIONAL_KINDS = ("sinusoidal", "learned")


def positional_embedding(kind: str, d_model: int, max_seq_length: int) -> nn.Module:
    """``"sinusoidal"`` -> ``PositionalEncoding``; ``"learned"`` -> ``LearnedPositionalEmbedding``."""
    if kind == "sinusoidal":
        return PositionalEncoding(d_model, max_seq_length)
    if kind == "learned":
        return LearnedPositionalEmbedding(d_model, max_seq_length)
    raise ValueError(f"unknown positional encoding {kind!r}; choose one of {POSITIONAL_KINDS}")
