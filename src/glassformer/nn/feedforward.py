"""The position-wise feed-forward network, applied to every position separately and identically.

FFN(x)    = act(x W_1 + b_1) W_2 + b_2                act = ReLU (the paper) or GELU (GPT-2, BERT)
SwiGLU(x) = (SiLU(x W_gate) ⊙ x W_up) W_2             gated (Shazeer 2020; Llama), ``gated=True``
"""

from __future__ import annotations

import torch
from torch import nn

from glassformer.nn.activation import ACTIVATIONS, check_activation
from glassformer.nn.dropout import Dropout
from glassformer.nn.linear import Linear

__all__ = ["PositionWiseFeedForward", "check_activation"]


class PositionWiseFeedForward(nn.Module):
    """``(batch, seq, d_model)`` -> ``(batch, seq, d_model)`` through a hidden width ``d_ff``.

    ``fc1`` is W_1 (``d_model -> d_ff``) followed by the activation (one fused kernel when the weights are
    packed, see ``glassformer.nn.linear``), ``fc2`` is W_2 (``d_ff -> d_model``). ``dropout`` acts on the hidden
    activations, as in ``torch.nn.TransformerEncoderLayer`` and the Annotated Transformer.

    Gated (``gated=True``, SwiGLU with ``activation="silu"``): ``fc1.weight`` stacks ``[W_gate; W_up]`` row-wise,
    ``(2 * d_ff, d_model)``, so both are one matrix multiply, as Q, K and V are in the attention.
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        activation: str = "relu",
        dropout: float = 0.0,
        bias: bool = True,
        gated: bool = False,
    ):
        super().__init__()
        check_activation(activation)
        self.activation = activation
        self.gated = gated
        if gated:
            self.fc1 = Linear(d_model, 2 * d_ff, bias=bias)  # [W_gate; W_up]
        else:
            self.fc1 = Linear(d_model, d_ff, bias=bias, activation=activation)  # act(x W_1 + b_1)
        self.fc2 = Linear(d_ff, d_model, bias=bias)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = ACTIVATIONS[self.activation](gate) * up  # act(x W_gate) ⊙ x W_up
        return self.fc2(self.dropout(h))
