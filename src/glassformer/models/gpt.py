"""GPT: a decoder-only Transformer from the same parts (GPT-2's layout).

    x_0    = E[ids] + P[positions]                             (batch, seq, d_model), no sqrt(d_model) scale
    x_l    = DecoderLayer_l(x_{l-1})                           pre-norm, causal self-attention only, GELU
    logits = LayerNorm(x_N) Eᵀ                                 LM head tied to the token embedding

Each layer is ``glassformer.nn.DecoderLayer(cross_attention=False, norm_first=True)``: the same module as the
seq2seq decoder's, without the cross-attention. ``generate`` decodes with a preallocated key/value cache.
"""

from __future__ import annotations

import dataclasses
import math
import os

import torch
from torch import nn

from glassformer.checkpoints import load_state_dict_checked
from glassformer.checkpoints.huggingface import load_gpt2, save_gpt2
from glassformer.generation.cache import KVCache
from glassformer.models.config import ModelConfig
from glassformer.models.pretrained import PretrainedMixin
from glassformer.nn.dropout import Dropout
from glassformer.nn.embedding import LearnedPositionalEmbedding, TokenEmbedding
from glassformer.nn.feedforward import check_activation
from glassformer.nn.layers import DecoderLayer
from glassformer.nn.linear import Linear
from glassformer.nn.norm import LayerNorm
from glassformer.nn.validation import check_token_ids


@dataclasses.dataclass
class GPTConfig(ModelConfig):
    """Configuration of ``GPT``; the shape defaults are GPT-2 small (124M).

    ``dropout`` acts on embeddings and sublayer outputs (GPT-2's embd_pdrop / resid_pdrop),
    ``attention_dropout`` on the attention weights (attn_pdrop).
    """

    model_type = "gpt"

    vocab_size: int = 50257
    max_seq_length: int = 1024
    d_model: int = 768
    num_layers: int = 12
    num_heads: int = 12
    d_ff: int = 3072
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation: str = "gelu_tanh"
    layer_norm_eps: float = 1e-5
    bias: bool = True
    tie_embeddings: bool = True
    bos_id: int | None = None  # GPT-2 uses 50256 (<|endoftext|>) for both
    eos_id: int | None = None
    pad_id: int | None = None

    def __post_init__(self) -> None:
        self.check_positive("vocab_size", "max_seq_length", "d_model", "num_layers", "num_heads", "d_ff")
        self.check_heads(self.d_model, self.num_heads)
        self.check_probabilities("dropout", "attention_dropout")
        check_activation(self.activation)
        for name in ("bos_id", "eos_id", "pad_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                raise ValueError(f"{name}={value} is outside the vocabulary [0, {self.vocab_size})")


class GPT(PretrainedMixin, nn.Module):
    """Decoder-only language model. ``model(input_ids)`` -> logits ``(batch, seq, vocab_size)``."""

    config_class = GPTConfig

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.embedding = TokenEmbedding(config.vocab_size, config.d_model, scale=False)
        self.positions = LearnedPositionalEmbedding(config.d_model, config.max_seq_length)
        self.dropout = Dropout(config.dropout)
        self.layers = nn.ModuleList(
            DecoderLayer(
                config.d_model,
                config.num_heads,
                config.d_ff,
                dropout=config.dropout,
                activation=config.activation,
                norm_first=True,
                layer_norm_eps=config.layer_norm_eps,
                bias=config.bias,
                attention_dropout=config.attention_dropout,
                cross_attention=False,
            )
            for _ in range(config.num_layers)
        )
        self.final_norm = LayerNorm(config.d_model, config.layer_norm_eps)
        self.lm_head = Linear(config.d_model, config.vocab_size, bias=False)
        self.reset_parameters()
        if config.tie_embeddings:
            self.lm_head.weight = self.embedding.weight

    def reset_parameters(self) -> None:
        """GPT-2's initialization: N(0, 0.02) for matrices and embeddings, zero biases, and the projections that
        write into the residual stream (W_O, W_2) scaled down by 1/sqrt(2 · num_layers)."""
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for layer in self.layers:
            for linear in (layer.self_attn.out_proj, layer.ffn.fc2):
                nn.init.normal_(linear.weight, std=0.02 / math.sqrt(2 * self.config.num_layers))

    def make_cache(self, batch: int, max_length: int, dtype: torch.dtype | None = None) -> KVCache:
        """An empty key/value cache for ``batch`` sequences of up to ``max_length`` positions."""
        c = self.config
        weight = self.lm_head.weight
        return KVCache(
            c.num_layers, batch, c.num_heads, max_length, c.d_model // c.num_heads, dtype or weight.dtype, weight.device
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        last_token_only: bool = False,
        return_attentions: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """
        Args:
            input_ids: ``(batch, seq)`` token ids (with a cache: only the new tokens).
            attention_mask: ``(batch, past + seq)``, 1/True at real tokens, 0 at padding (left padding for
                batched prompts); positions are counted from each row's first real token.
            cache: a ``KVCache`` from ``make_cache``; filled and advanced by ``seq`` positions.
            last_token_only: compute logits for the last position only (decoding).
            return_attentions: also return each layer's weights ``(batch, heads, seq, past + seq)``.

        Returns:
            logits ``(batch, seq, vocab_size)`` (``(batch, 1, vocab_size)`` with ``last_token_only``).
        """
        c = self.config
        check_token_ids(input_ids, c.vocab_size, None)
        batch, seq = input_ids.shape
        past = cache.length if cache is not None else 0
        if past + seq > c.max_seq_length:
            raise ValueError(
                f"{past + seq} positions exceed the model's context of max_seq_length={c.max_seq_length}; "
                "shorten the prompt or generate fewer tokens"
            )
        # self-attention mask (batch | 1, 1, seq, past + seq): causal, and real tokens only
        mask = None
        position_ids = None
        if attention_mask is not None:
            if attention_mask.shape != (batch, past + seq):
                raise ValueError(
                    f"attention_mask must have shape (batch, past + seq) = {(batch, past + seq)}, "
                    f"got {tuple(attention_mask.shape)}"
                )
            real = attention_mask.bool()
            position_ids = (real.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
            mask = real[:, None, None, :]
        if seq > 1 or mask is not None:
            causal = torch.ones(seq, past + seq, dtype=torch.bool, device=input_ids.device).tril(past)
            mask = causal if mask is None else mask & causal

        x = self.dropout(self.positions(self.embedding(input_ids), offset=past, position_ids=position_ids))
        attentions = []
        for i, layer in enumerate(self.layers):
            layer_cache = cache.layer(i) if cache is not None else None
            x, weights, _ = layer(x, self_mask=mask, need_weights=return_attentions, cache=layer_cache)
            attentions.append(weights)
        if cache is not None:
            cache.advance(seq)
        if last_token_only:
            x = x[:, -1:]
        logits = self.lm_head(self.final_norm(x))
        return (logits, attentions) if return_attentions else logits

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, **options) -> torch.Tensor:
        """Prompt + new tokens, ``(batch, prompt + new)``; see ``glassformer.generation.generate`` for options."""
        from glassformer.generation.search import generate

        options.setdefault("eos_token_id", self.config.eos_id)
        options.setdefault("pad_token_id", self.config.pad_id)
        return generate(self, input_ids, **options)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: torch.dtype | None = None) -> GPT:
        """Load a glassformer GPT checkpoint or a Hugging Face GPT-2 directory (config.json + model.safetensors
        or a weights-only pytorch_model.bin), from a path or, by model name, from the local Hugging Face cache.
        Returned in eval mode; ``dtype`` converts the weights (e.g. ``torch.bfloat16``)."""
        config_dict, tensors = load_gpt2(path)
        model = cls(cls.config_class.from_dict(config_dict))
        load_state_dict_checked(model, tensors)
        return model.eval() if dtype is None else model.to(dtype).eval()

    def save_pretrained(self, directory: str | os.PathLike, format: str = "glassformer"):
        """``format="glassformer"``: config.json + model.safetensors in glassformer's names;
        ``format="hf"``: a Hugging Face GPT-2 directory that ``GPT2LMHeadModel.from_pretrained`` opens."""
        if format == "glassformer":
            return super().save_pretrained(directory)
        if format == "hf":
            return save_gpt2(directory, self.config.to_dict(), self.state_dict())
        raise ValueError(f"unknown checkpoint format {format!r}; use 'glassformer' or 'hf'")
