"""The one configuration of a Transformer block, and of a stack of them.

Every variant of the parts is a field here, validated once, and every layer takes the whole object:

    BlockConfig   one layer: width, heads, norm and its placement, attention (heads, key/value heads, biases,
                  scaling, how positions enter), feed-forward (activation, gated or not), dropouts
    StackConfig   an encoder or decoder: N blocks, the token embedding, the positions, the final norm

A model's config (``TransformerConfig``, ``GPTConfig``, ``BertConfig``) keeps the names its checkpoints use and
builds these from them, so a new option added here reaches every model family.

How positions enter (``position``):

    absolute   a vector per position added to the embeddings by the stack (sinusoidal or learned)
    rope       queries and keys rotated by their positions inside self-attention (RoPE; ``rope_theta``)
    relative   a learned bias per head and relative-distance bucket added to the self-attention logits (T5;
               ``relative_buckets``, ``relative_max_distance``), computed once per stack
"""

from __future__ import annotations

import dataclasses
import math

from glassformer.nn.activation import ACTIVATIONS
from glassformer.nn.norm import NORMS
from glassformer.options import check_fields

POSITIONS = ("absolute", "rope", "relative")
POSITIONAL_EMBEDDINGS = ("sinusoidal", "learned", "none")


def _check_choice(name: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    """One encoder or decoder layer. Defaults: the paper's post-norm layer with ReLU.

    Attention: ``num_heads`` heads of ``head_dim`` (default ``d_model // num_heads``); ``num_kv_heads`` key/value
    heads (grouped-query attention; default ``num_heads``); ``attention_scale`` multiplies Q Kᵀ (default
    1/sqrt(head_dim); T5 uses 1, its W_Q initialization carries the scale).
    Norm: ``norm`` ("layernorm" | "rmsnorm") with ``layer_norm_eps``; ``norm_first`` (pre-norm) or after the
    residual sum (post-norm, the paper).
    Feed-forward: ``d_ff`` hidden units (default 4 · d_model), ``activation``, ``gated_ffn`` (act(x W_gate) ⊙ x W_up:
    SwiGLU with "silu", T5 v1.1's gated GELU with "gelu_tanh").
    Dropout: ``dropout`` on each sublayer's output, ``attention_dropout`` on the attention weights,
    ``activation_dropout`` on the feed-forward's hidden activations.
    Training speed (the fast recipe, ``glassformer.training.recipes``): ``qk_norm`` divides each head's queries
    and keys by their RMS before the product, softmax(RMS(q) RMS(k)ᵀ · s) (Dehghani et al. 2023; without a
    learned γ, as the modded-nanoGPT speedrun); ``zero_init_projections`` starts W_O and W_2 — the matrices that
    write into the residual stream — at zero, so each block begins as the identity; ``activation="relu2"``.
    """

    d_model: int
    num_heads: int = 1
    d_ff: int | None = None
    num_kv_heads: int | None = None
    head_dim: int | None = None
    norm: str = "layernorm"
    norm_first: bool = False
    layer_norm_eps: float = 1e-5
    attention_bias: bool = True
    attention_scale: float | None = None
    position: str = "absolute"
    rope_theta: float = 10000.0
    relative_buckets: int = 32
    relative_max_distance: int = 128
    activation: str = "relu"
    gated_ffn: bool = False
    ffn_bias: bool = True
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    qk_norm: bool = False
    zero_init_projections: bool = False

    def __post_init__(self) -> None:
        check_fields(self)  # types and ranges (glassformer.options.RULES); the relations between fields below
        if self.head_dim is None and self.d_model % self.num_heads:
            raise ValueError(
                f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}; choose num_heads that "
                "divides d_model (or give head_dim)"
            )
        if self.num_heads % self.kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}; "
                "choose num_kv_heads that divides num_heads"
            )
        _check_choice("norm", self.norm, NORMS)
        _check_choice("position", self.position, POSITIONS)
        _check_choice("activation", self.activation, tuple(ACTIVATIONS))
        if self.position == "rope" and self.dim_per_head % 2:
            raise ValueError(f"rotary embeddings need an even head dimension, got {self.dim_per_head}")

    @classmethod
    def of(cls, config: BlockConfig | int, num_heads: int | None = None, d_ff: int | None = None, **fields):
        """``config`` itself, or the block of ``d_model=config`` and the given fields (``bias`` sets both
        ``attention_bias`` and ``ffn_bias`` unless they are given): the short form of the layers' constructors."""
        if isinstance(config, BlockConfig):
            if num_heads is not None or d_ff is not None or fields:
                raise ValueError("pass either a BlockConfig or d_model with options, not both")
            return config
        bias = fields.pop("bias", None)
        if bias is not None:
            fields.setdefault("attention_bias", bias)
            fields.setdefault("ffn_bias", bias)
        fields = {k: v for k, v in fields.items() if v is not None}
        return cls(d_model=config, num_heads=num_heads or 1, d_ff=d_ff, **fields)

    @property
    def dim_per_head(self) -> int:
        return self.head_dim if self.head_dim is not None else self.d_model // self.num_heads

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads if self.num_kv_heads is not None else self.num_heads

    @property
    def hidden_size(self) -> int:
        """The feed-forward's hidden width."""
        return self.d_ff if self.d_ff is not None else 4 * self.d_model

    @property
    def scale(self) -> float:
        """The factor of Q Kᵀ: ``attention_scale``, or 1/sqrt(head_dim)."""
        return self.attention_scale if self.attention_scale is not None else 1 / math.sqrt(self.dim_per_head)


@dataclasses.dataclass(frozen=True)
class StackConfig:
    """A stack — an encoder, a decoder, GPT's or BERT's layers: ``num_layers`` blocks of ``block`` over embeddings of
    ``vocab_size`` tokens.

    ``positional``: the vectors added to the embeddings — "sinusoidal" (the paper), "learned", or "none" (with
    rotary or relative positions in the blocks); ``scale_embeddings``: E[ids] · sqrt(d_model) as in the paper;
    ``type_vocab_size``: BERT's segment embeddings (0: none); ``embedding_norm``: BERT's norm of the summed
    embeddings; ``final_norm``: a norm after the last block (None = with pre-norm, whose blocks leave the residual
    stream un-normalized); ``pad_token_id``: the embedding row kept at zero.
    """

    block: BlockConfig
    num_layers: int
    vocab_size: int
    max_seq_length: int
    positional: str = "sinusoidal"
    scale_embeddings: bool = True
    type_vocab_size: int = 0
    embedding_norm: bool = False
    final_norm: bool | None = None
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        check_fields(self)
        _check_choice("positional embedding", self.positional, POSITIONAL_EMBEDDINGS)
        if self.positional != "none" and self.block.position != "absolute":
            raise ValueError(
                f"{self.block.position} positions need positional='none' (nothing added to the embeddings), "
                f"got {self.positional!r}"
            )
        if self.positional == "none" and self.block.position == "absolute":
            raise ValueError("positional='none' needs rotary or relative positions in the blocks")
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"pad_token_id={self.pad_token_id} is outside the vocabulary [0, {self.vocab_size})")

    @property
    def has_final_norm(self) -> bool:
        return self.block.norm_first if self.final_norm is None else self.final_norm
