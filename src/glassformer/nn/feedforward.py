"""The position-wise feed-forward network, applied to every position separately and identically.

FFN(x) = act(x W_1 + b_1) W_2 + b_2,   act = ReLU (the paper: max(0, ·)) or GELU (GPT-2, BERT)
"""

from __future__ import annotations

import torch
from torch import nn

from glassformer.nn.activation import check_activation
from glassformer.nn.dropout import Dropout
from glassformer.nn.linear import Linear

__all__ = ["PositionWiseFeedForward", "check_activation"]


class PositionWiseFeedForward(nn.Module):
    """``(batch, seq, d_model)`` -> ``(batch, seq, d_model)`` through a hidden width ``d_ff``.

    ``fc1`` is W_1 (``d_model -> d_ff``) followed by the activation (one fused kernel when the weights are
    packed, see ``glassformer.nn.linear``), ``fc2`` is W_2 (``d_ff -> d_model``). ``dropout`` acts on the hidden
    activations, as in ``torch.nn.TransformerEncoderLayer`` and the Annotated Transformer.
    """

    def __init__(self, d_model: int, d_ff: int, activation: str = "relu", dropout: float = 0.0, bias: bool = True):
        super().__init__()
        check_activation(activation)
        self.activation = activation
        self.fc1 = Linear(d_model, d_ff, bias=bias, activation=activation)  # act(x W_1 + b_1)
        self.fc2 = Linear(d_ff, d_model, bias=bias)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.fc1(x)))
