"""The encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al., 2017), and T5 by configuration.

    memory = Encoder(src)                              (batch, src_len, d_model)
    hidden = Decoder(tgt, memory)                      (batch, tgt_len, d_model)
    logits = hidden W_out + b_out                      (batch, tgt_len, tgt_vocab_size)

Masks are built from ``pad_token_id`` unless given (bool, True = may attend):
    encoder self-attention   padding_mask(src)              (batch, 1, 1, src_len)
    decoder self-attention   causal & padding_mask(tgt)     (batch, 1, tgt_len, tgt_len)
    decoder cross-attention  padding_mask(src)              (batch, 1, 1, src_len)
The cross-attention mask hides source padding from the decoder (the guide passed None there). When the decoder
starts from the padding id itself (T5: ``bos_token_id == pad_token_id``) the target mask is causal only: right
padding after the real tokens cannot reach them through a causal mask, and the loss ignores it.

Every option of the shared block is a field (``TransformerConfig.block``): RMSNorm, grouped-query attention,
gated feed-forward, rotary or relative positions, per-part biases. T5 (``TransformerConfig.t5(...)``) is

    relative position bias (32 buckets, max distance 128; bidirectional in the encoder, causal in the decoder),
    RMSNorm without bias, pre-norm, no 1/sqrt(d) scaling of the logits, no biases, ReLU (v1.0) or gated GELU
    (v1.1), embeddings shared and unscaled, logits = (hidden · d_model^-0.5) Eᵀ when the output is tied.
"""

from __future__ import annotations

import dataclasses
import math
import os

import torch
from torch import nn

from glassformer.checkpoints import load_state_dict_checked
from glassformer.checkpoints.huggingface import read_config, resolve_model_dir
from glassformer.checkpoints.huggingface_t5 import load_t5, save_t5
from glassformer.generation.config import GenerationConfig
from glassformer.generation.seq2seq import generate_seq2seq
from glassformer.masks import causal_mask, decoder_self_attention_mask, padding_mask
from glassformer.models.config import ModelConfig
from glassformer.models.outputs import Seq2SeqLMOutput
from glassformer.models.pretrained import PretrainedMixin, build_for_weights
from glassformer.nn.cache import KVCache
from glassformer.nn.config import BlockConfig, StackConfig
from glassformer.nn.embedding import LearnedPositionalEmbedding
from glassformer.nn.layers import zero_init_projections
from glassformer.nn.linear import Linear
from glassformer.nn.stacks import Decoder, Encoder
from glassformer.nn.validation import check_mask
from glassformer.options import check_fields

POSITIONAL = ("sinusoidal", "learned", "rope", "relative")


@dataclasses.dataclass
class TransformerConfig(ModelConfig):
    """Configuration of the seq2seq ``Transformer``. Field names follow the guide; defaults are the paper's
    base model. ``num_layers`` is the depth of the encoder (and of the decoder unless ``num_decoder_layers``).

    Dropout: ``dropout`` on every sublayer output and on embeddings + positions (the paper's placement);
    ``attention_dropout`` on the attention weights and ``activation_dropout`` inside the feed-forward are extra
    (``torch.nn.Transformer`` sets both to ``dropout``).

    Variant options (each a field of ``glassformer.nn.BlockConfig`` or of the stacks):
        norm_first: False = post-norm (the paper), True = pre-norm. norm: "layernorm" or "rmsnorm".
        activation: "relu" (the paper), "gelu", "gelu_tanh" or "silu"; gated_ffn: act(x W_gate) ⊙ x W_up.
        positional: "sinusoidal" (the paper), "learned", "rope" (rotary, ``rope_theta``) or "relative" (T5's
            bias, ``relative_buckets``, ``relative_max_distance``).
        num_kv_heads: grouped-query attention; head_dim: per head (default d_model / num_heads).
        attention_scale: the factor of Q Kᵀ (default 1/sqrt(head_dim); T5 1.0).
        final_norm: a norm after each stack; None = only for pre-norm (``torch.nn.Transformer`` always has one).
        share_embeddings: one embedding table for source and target (needs equal vocabularies).
        tie_output: the output projection reuses the target embedding matrix; scale_output multiplies the hidden
            states by d_model^-0.5 before it (T5).
        scale_embeddings: E[ids] · sqrt(d_model) (the paper; not T5).
        bias: biases in the attention, feed-forward and output projections (attention_bias / ffn_bias override).
        qk_norm: an RMS norm of each head's queries and keys; zero_init_projections: W_O and W_2 start at zero
            (both training-speed options of the fast recipe, ``glassformer.training.recipes``).
    """

    model_type = "transformer"

    src_vocab_size: int = 10000
    tgt_vocab_size: int = 10000
    d_model: int = 512
    num_layers: int = 6
    num_heads: int = 8
    d_ff: int = 2048
    max_seq_length: int = 512
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    pad_token_id: int = 0
    norm_first: bool = False
    activation: str = "relu"
    positional: str = "sinusoidal"
    final_norm: bool | None = None
    share_embeddings: bool = False
    tie_output: bool = False
    layer_norm_eps: float = 1e-5
    bias: bool = True
    bos_token_id: int | None = None  # the decoder's first input when translating
    eos_token_id: int | None = None  # ends a translation
    unk_token_id: int | None = None
    norm: str = "layernorm"
    num_kv_heads: int | None = None
    head_dim: int | None = None
    gated_ffn: bool = False
    attention_bias: bool | None = None
    ffn_bias: bool | None = None
    attention_scale: float | None = None
    rope_theta: float = 10000.0
    relative_buckets: int = 32
    relative_max_distance: int = 128
    num_decoder_layers: int | None = None
    scale_embeddings: bool = True
    scale_output: bool = False
    qk_norm: bool = False
    zero_init_projections: bool = False

    @classmethod
    def t5(cls, **fields) -> TransformerConfig:
        """A T5-style config (v1.0: ReLU, tied output; pass ``gated_ffn=True, activation="gelu_tanh"`` for v1.1)."""
        t5 = dict(
            norm="rmsnorm", norm_first=True, positional="relative", attention_scale=1.0, bias=False,
            activation="relu", layer_norm_eps=1e-6, share_embeddings=True, tie_output=True, scale_output=True,
            scale_embeddings=False, dropout=0.1, pad_token_id=0, bos_token_id=0, eos_token_id=1,
        )  # fmt: skip
        return cls(**{**t5, **fields})

    def block(self) -> BlockConfig:
        """The block every layer of both stacks is built from."""
        position = {"sinusoidal": "absolute", "learned": "absolute"}.get(self.positional, self.positional)
        return BlockConfig(
            d_model=self.d_model, num_heads=self.num_heads, d_ff=self.d_ff, num_kv_heads=self.num_kv_heads,
            head_dim=self.head_dim, norm=self.norm, norm_first=self.norm_first, layer_norm_eps=self.layer_norm_eps,
            attention_bias=self.bias if self.attention_bias is None else self.attention_bias,
            attention_scale=self.attention_scale, position=position, rope_theta=self.rope_theta,
            relative_buckets=self.relative_buckets, relative_max_distance=self.relative_max_distance,
            activation=self.activation, gated_ffn=self.gated_ffn,
            ffn_bias=self.bias if self.ffn_bias is None else self.ffn_bias, dropout=self.dropout,
            attention_dropout=self.attention_dropout, activation_dropout=self.activation_dropout,
            qk_norm=self.qk_norm, zero_init_projections=self.zero_init_projections,
        )  # fmt: skip

    def stack(self, side: str) -> StackConfig:
        """The encoder's (``side="encoder"``) or the decoder's stack."""
        encoder = side == "encoder"
        return StackConfig(
            block=self.block(),
            num_layers=self.num_layers if encoder or self.num_decoder_layers is None else self.num_decoder_layers,
            vocab_size=self.src_vocab_size if encoder else self.tgt_vocab_size,
            max_seq_length=self.max_seq_length,
            positional=self.positional if self.positional in ("sinusoidal", "learned") else "none",
            scale_embeddings=self.scale_embeddings,
            final_norm=self.final_norm,
            pad_token_id=None if self.pad_is_start else self.pad_token_id,
        )

    @property
    def pad_is_start(self) -> bool:
        """The decoder starts from the padding id (T5): that row is a real, trained embedding then."""
        return self.bos_token_id is not None and self.bos_token_id == self.pad_token_id

    def __post_init__(self) -> None:
        check_fields(self)  # every field's type and range (glassformer.options)
        if self.positional not in POSITIONAL:
            raise ValueError(f"unknown positional encoding {self.positional!r}; choose one of {', '.join(POSITIONAL)}")
        for side in ("encoder", "decoder"):
            self.stack(side)  # validates every block and stack option once, in nn.config
        if not 0 <= self.pad_token_id < min(self.src_vocab_size, self.tgt_vocab_size):
            raise ValueError(
                f"pad_token_id={self.pad_token_id} is outside the vocabularies; it must be a valid token id"
            )
        for name in ("bos_token_id", "eos_token_id", "unk_token_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.tgt_vocab_size:
                raise ValueError(f"{name}={value} is outside the target vocabulary of {self.tgt_vocab_size} tokens")
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ValueError(
                f"share_embeddings needs src_vocab_size == tgt_vocab_size, got {self.src_vocab_size} and "
                f"{self.tgt_vocab_size}; use a joint vocabulary or turn share_embeddings off"
            )


class Transformer(PretrainedMixin, nn.Module):
    """The encoder-decoder model. ``model(src, tgt)`` -> logits ``(batch, tgt_len, tgt_vocab_size)``.

    For teacher-forced training feed ``tgt[:, :-1]`` and compare the logits with ``tgt[:, 1:]``.
    ``generate(input_ids, ...)`` decodes through the shared search (``glassformer.generation``).
    """

    config_class = TransformerConfig
    output_layers = ("output_projection",)  # quantized with the embeddings (models.quantization)

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config.stack("encoder"))
        self.decoder = Decoder(config.stack("decoder"))
        self.output_projection = Linear(config.d_model, config.tgt_vocab_size, bias=config.bias)
        self.reset_parameters()
        if config.share_embeddings:
            self.decoder.embedding.embedding.weight = self.encoder.embedding.embedding.weight
        if config.tie_output:
            self.output_projection.weight = self.decoder.embedding.embedding.weight

    def reset_parameters(self) -> None:
        """Xavier-uniform matrices and zero biases (as ``torch.nn.Transformer``); token embeddings with unit
        variance where the first layer reads them: N(0, 1/d_model) under the sqrt(d_model) scale, N(0, 1) without
        it (T5); the padding row zero. Without the 1/sqrt(head_dim) logit scale (T5) W_Q carries it; a relative
        bias starts at 0."""
        c = self.config
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for stack in (self.encoder, self.decoder):
            nn.init.normal_(stack.embedding.weight, std=1 / math.sqrt(c.d_model) if c.scale_embeddings else 1.0)
            with torch.no_grad():
                if not c.pad_is_start:
                    stack.embedding.weight[c.pad_token_id].zero_()
                if c.attention_scale is not None:  # W_Q's rows scaled as the missing 1/sqrt(d_k) would scale Q
                    factor = c.attention_scale * math.sqrt(c.block().dim_per_head)
                    for layer in stack.layers:
                        for attention in (layer.self_attn, getattr(layer, "cross_attn", None)):
                            if attention is not None:
                                attention.qkv_proj.weight[: attention.inner].div_(factor)
            if isinstance(stack.positions, LearnedPositionalEmbedding):
                nn.init.normal_(stack.positions.weight, std=0.02)
            if stack.relative_bias is not None:
                nn.init.zeros_(stack.relative_bias.embedding.weight)
            zero_init_projections(stack.layers)

    def source_mask(self, src: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(batch, 1, 1, src_len)``: the real source tokens, from ``attention_mask`` (1 real, 0 padding) if given,
        else every token that is not ``pad_token_id``."""
        if attention_mask is None:
            return padding_mask(src, self.config.pad_token_id)
        if attention_mask.shape != src.shape:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)} but the source has {tuple(src.shape)}"
            )
        return attention_mask.bool()[:, None, None, :]

    def target_mask(self, tgt: torch.Tensor) -> torch.Tensor:
        """The decoder's self-attention mask: causal & target padding (causal only when the start token is the
        padding id, see the module's docstring)."""
        if self.config.pad_is_start:
            return causal_mask(tgt.size(1), tgt.device)
        return decoder_self_attention_mask(tgt, self.config.pad_token_id)

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(batch, src_len)`` ids -> memory ``(batch, src_len, d_model)``; mask defaults to source padding."""
        return self.encoder(src, self.source_mask(src) if src_mask is None else src_mask)

    def make_cache(self, batch: int, max_length: int) -> KVCache:
        """An empty key/value cache of the decoder's self-attention for ``batch`` translations of up to
        ``max_length`` target positions, in ``cache_dtype`` (else the model's dtype)."""
        block, weight = self.config.block(), self.decoder.layers[0].norm1.weight  # float even when quantized
        layers, dtype = len(self.decoder.layers), self.cache_dtype or weight.dtype
        return KVCache(layers, batch, block.kv_heads, max_length, block.dim_per_head, dtype, weight.device)

    def cross_attention_kv(self, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each decoder layer's cross-attention keys and values of ``memory``, computed once per source."""
        return self.decoder.cross_attention_kv(memory)

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of decoder states: ``hidden W_outᵀ (+ b)``, the hidden states scaled by d_model^-0.5 first with
        ``scale_output`` (T5's tied output)."""
        if self.config.scale_output:
            hidden = hidden * self.config.d_model**-0.5
        return self.output_projection(hidden)

    def decode(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor | None,
        memory_mask: torch.Tensor | None,
        tgt_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        cross_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        last_token_only: bool = False,
    ) -> torch.Tensor:
        """``(batch, tgt_len)`` ids and memory -> logits ``(batch, tgt_len, tgt_vocab_size)``.

        ``memory_mask`` is the source padding mask, ``padding_mask(src, pad_token_id)``; it is required so that a
        caller cannot forget it (pass None explicitly only when the source has no padding).

        Decoding one token at a time: pass ``cache`` (from ``make_cache``; ``tgt`` then holds only the new
        tokens, which must not be padding) and ``cross_kv`` (from ``cross_attention_kv(memory)``; ``memory`` may
        then be None); ``last_token_only`` computes logits for the last position only, ``(batch, 1, vocab)``.
        ``cross_kv`` (and ``memory_mask``) may hold one row per group of consecutive target rows — beam search's
        beams of one source —, read once for the group.
        """
        if memory is None and cross_kv:
            batch = cross_kv[0][0].size(0)
            if tgt.size(0) % batch:
                raise ValueError(f"tgt has batch size {tgt.size(0)}, not a multiple of cross_kv's {batch}")
        elif memory.size(0) != tgt.size(0):
            raise ValueError(f"tgt has batch size {tgt.size(0)} but memory has {memory.size(0)}; they must match")
        if tgt_mask is None:
            if cache is None:
                tgt_mask = self.target_mask(tgt)
            elif tgt.size(1) > 1:  # several new tokens after the cached ones: causal over past + new
                past, seq = cache.length, tgt.size(1)
                tgt_mask = causal_mask(seq, tgt.device, past)
        hidden = self.decoder(tgt, memory, tgt_mask, memory_mask, cache=cache, cross_kv=cross_kv)
        if last_token_only:
            hidden = hidden[:, -1:]
        return self.project(hidden)

    def forward(
        self,
        src: torch.Tensor,
        tgt: torch.Tensor,
        src_mask: torch.Tensor | None = None,
        tgt_mask: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | Seq2SeqLMOutput:
        """
        Args:
            src: ``(batch, src_len)`` source ids (``input_ids``).
            tgt: ``(batch, tgt_len)`` target ids, the decoder's input, e.g. ``[BOS] y_1 .. y_{n-1}``
                (``decoder_input_ids``).
            src_mask: encoder self-attention mask, default the source padding.
            tgt_mask: decoder self-attention mask, default ``causal & padding_mask(tgt, pad_token_id)``.
            memory_mask: cross-attention mask, default the source padding.
            output_attentions: return a ``Seq2SeqLMOutput`` with every layer's attention weights (the reference
                path): encoder ``(batch, heads, src_len, src_len)``, decoder ``(batch, heads, tgt_len, tgt_len)``,
                cross ``(batch, heads, tgt_len, src_len)``.
            attention_mask: ``(batch, src_len)``, 1 at real source tokens, 0 at padding (default: ``pad_token_id``).

        Returns:
            logits ``(batch, tgt_len, tgt_vocab_size)``, or a ``Seq2SeqLMOutput`` with ``output_attentions``.
        """
        if src.dim() == 2 and tgt.dim() == 2:  # shapes checked up front, before the encoder runs
            if src.size(0) != tgt.size(0):
                raise ValueError(f"src has batch size {src.size(0)} but tgt has {tgt.size(0)}; they must match")
            (batch, s), t, h = src.shape, tgt.size(1), self.config.num_heads
            for mask, shape, name in (
                (src_mask, (batch, h, s, s), "src_mask"),
                (tgt_mask, (batch, h, t, t), "tgt_mask"),
                (memory_mask, (batch, h, t, s), "memory_mask"),
            ):
                if mask is not None:
                    check_mask(mask, shape, name)
        src_padding = self.source_mask(src, attention_mask)
        memory_mask = src_padding if memory_mask is None else memory_mask
        src_mask = src_padding if src_mask is None else src_mask
        if not output_attentions:
            return self.decode(tgt, self.encoder(src, src_mask), memory_mask, tgt_mask)
        memory, encoder = self.encoder(src, src_mask, output_attentions=True)
        tgt_mask = self.target_mask(tgt) if tgt_mask is None else tgt_mask
        hidden, decoder, cross = self.decoder(tgt, memory, tgt_mask, memory_mask, output_attentions=True)
        return Seq2SeqLMOutput(self.project(hidden), encoder, decoder, cross, memory)

    @torch.no_grad()
    def generate(
        self, input_ids: torch.Tensor, generation_config: GenerationConfig | None = None, **options
    ) -> torch.Tensor:
        """Decode for a batch of sources ``(batch, src_len)``: the decoder's tokens ``(batch, 1 + new)`` beginning
        with its start token (``bos_token_id``), as ``transformers``' ``generate`` returns for T5. ``options``:
        ``attention_mask``, ``decoder_start_token_id`` and any ``GenerationConfig`` field (``max_new_tokens``,
        ``min_new_tokens``, ``num_beams``, ``length_penalty``, ...). ``eos_token_id`` / ``pad_token_id`` default to
        the config's ``eos_token_id`` / ``pad_token_id``."""
        return generate_seq2seq(self, input_ids, generation_config, **options)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> Transformer:
        """A glassformer checkpoint, or a Hugging Face ``T5ForConditionalGeneration`` directory (T5 v1.0 or
        v1.1 / Flan-T5 layout), from a path or, by name, the local Hugging Face cache. In eval mode."""
        directory = resolve_model_dir(path)
        if read_config(directory).get("model_type") != "t5":
            return super().from_pretrained(directory)
        config_dict, tensors = load_t5(directory)
        model = build_for_weights(cls, cls.config_class.from_dict(config_dict), tensors)
        load_state_dict_checked(model, tensors)
        return model.eval()

    def save_pretrained(self, directory: str | os.PathLike, format: str = "glassformer", state_dict=None):
        """``format="glassformer"``: config.json + model.safetensors; ``format="hf"``: a Hugging Face
        ``T5ForConditionalGeneration`` directory (for a T5-style config) that ``transformers`` opens."""
        if format == "glassformer":
            return super().save_pretrained(directory, state_dict)
        if format == "hf":
            return save_t5(directory, self.config.to_dict(), self.state_dict())
        raise ValueError(f"unknown checkpoint format {format!r}; use 'glassformer' or 'hf'")
