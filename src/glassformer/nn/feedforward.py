"""The position-wise feed-forward network, applied to every position separately and identically.

FFN(x)   = act(x W_1 + b_1) W_2 + b_2                act = ReLU (the paper, T5 v1.0) or GELU (GPT-2, BERT)
Gated(x) = (act(x W_gate) ⊙ x W_up) W_2              ``gated_ffn`` (Shazeer 2020): SwiGLU with SiLU (Llama),
                                                      gated GELU with GELU-tanh (T5 v1.1, Flan-T5)
"""

from __future__ import annotations

import torch
from torch import nn

from glassformer.nn.activation import ACTIVATIONS, check_activation
from glassformer.nn.config import BlockConfig
from glassformer.nn.dropout import Dropout
from glassformer.nn.linear import Linear

__all__ = ["PositionWiseFeedForward", "check_activation"]


class PositionWiseFeedForward(nn.Module):
    """``(batch, seq, d_model)`` -> ``(batch, seq, d_model)`` through a hidden width ``d_ff``, from a ``BlockConfig``
    (``activation``, ``gated_ffn``, ``ffn_bias``, ``activation_dropout``).

    ``fc1`` is W_1 (``d_model -> d_ff``) followed by the activation (one fused kernel when the weights are
    packed, see ``glassformer.nn.linear``), ``fc2`` is W_2 (``d_ff -> d_model``). Dropout acts on the hidden
    activations, as in ``torch.nn.TransformerEncoderLayer`` and the Annotated Transformer.

    Gated: ``fc1.weight`` stacks ``[W_gate; W_up]`` row-wise, ``(2 * d_ff, d_model)``, so both are one matrix
    multiply, as Q, K and V are in the attention.

    ``PositionWiseFeedForward(d_model, d_ff, activation="relu", dropout=0.0, bias=True, gated=False)`` is short for
    the ``BlockConfig`` with those fields.
    """

    def __init__(
        self,
        config: BlockConfig | int,
        d_ff: int | None = None,
        activation: str = "relu",
        dropout: float = 0.0,
        bias: bool = True,
        gated: bool = False,
    ):
        super().__init__()
        if not isinstance(config, BlockConfig):
            config = BlockConfig(
                d_model=config, d_ff=d_ff, activation=activation, activation_dropout=dropout, ffn_bias=bias,
                gated_ffn=gated,
            )  # fmt: skip
        d_model, d_ff = config.d_model, config.hidden_size
        self.activation = config.activation
        self.gated = config.gated_ffn
        if self.gated:
            self.fc1 = Linear(d_model, 2 * d_ff, bias=config.ffn_bias)  # [W_gate; W_up]
        else:
            self.fc1 = Linear(d_model, d_ff, bias=config.ffn_bias, activation=self.activation)  # act(x W_1 + b_1)
        self.fc2 = Linear(d_ff, d_model, bias=config.ffn_bias)
        self.dropout = Dropout(config.activation_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = ACTIVATIONS[self.activation](gate) * up  # act(x W_gate) ⊙ x W_up
        return self.fc2(self.dropout(h))
