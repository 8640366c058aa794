"""Activation functions of the feed-forward networks, by name.

relu(x)      = max(0, x)                                        the paper
gelu(x)      = x Φ(x) = x · ½ (1 + erf(x / √2))                 BERT
gelu_tanh(x) = ½ x (1 + tanh(√(2/π) (x + 0.044715 x³)))         GPT-2's approximation
silu(x)      = x σ(x) = x / (1 + e^(−x))                         Llama's gate (SwiGLU, see feedforward.py)
relu2(x)     = max(0, x)²                                      Primer (So et al. 2021), the modded-nanoGPT speedrun
"""

from __future__ import annotations

import torch.nn.functional as F

ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,  # exact, with erf (BERT)
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's approximation
    "silu": F.silu,  # also called swish
    "relu2": lambda x: F.relu(x).square(),  # ReLU squared
}


def check_activation(name: str) -> None:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
