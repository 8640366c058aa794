"""The serving tests' shared model: a tiny Llama-style GPT (their helpers are in ``server_harness.py``)."""

import pytest
import torch

from glassformer import GPT, GPTConfig


@pytest.fixture(scope="session")
def tiny_lm(char_tokenizer):
    """A random 2-layer Llama-style GPT over the character vocabulary: ``(model, tokenizer)``."""
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=char_tokenizer.vocab_size, max_seq_length=64, d_model=32, num_layers=2, num_heads=4, d_ff=64,
        positional="rope", norm="rmsnorm", gated_ffn=True, activation="silu", num_kv_heads=2, bias=False,
    )  # fmt: skip
    return GPT(config).eval(), char_tokenizer
