"""GPT: a decoder-only Transformer from the same parts — GPT-2's layout, or Llama's by configuration.

GPT-2 (``GPTConfig()``):

    x_0    = E[ids] + P[positions]                             (batch, seq, d_model), no sqrt(d_model) scale
    x_l    = DecoderLayer_l(x_{l-1})                           pre-norm, causal self-attention only, GELU
    logits = LayerNorm(x_N) Eᵀ                                 LM head tied to the token embedding

Llama (``GPTConfig.llama(...)``; SmolLM2, Llama 2/3 shapes): the same model with other options

    x_0    = E[ids]                                            no position added: RoPE rotates Q and K instead
    x_l    = DecoderLayer_l(x_{l-1})                           RMSNorm, grouped-query attention, SwiGLU, no biases
    logits = RMSNorm(x_N) W_outᵀ                               W_out tied to E or not

Each layer is ``glassformer.nn.DecoderLayer(cross_attention=False, norm_first=True)``: the same module as the
seq2seq decoder's, without the cross-attention. ``forward`` always runs these modules. ``generate`` decodes with a
preallocated key/value cache through the step ``glassformer.generation.step`` chooses: for a quantized model,
``glassformer.generation.fused_step`` runs each row's next token through all layers in one torch operator
(``glassformer.backends.cpu.decoder``, tested against these modules).
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import torch
from torch import nn

from glassformer import runtime
from glassformer.checkpoints import load_state_dict_checked
from glassformer.checkpoints.gguf import find_gguf, read_gguf
from glassformer.checkpoints.gguf_export import tokenizer_metadata, write_gguf
from glassformer.checkpoints.huggingface import load_gpt2, read_config, resolve_model_dir, save_gpt2
from glassformer.checkpoints.huggingface_llama import load_llama, save_llama
from glassformer.generation.config import GenerationConfig
from glassformer.generation.search import generate
from glassformer.masks import causal_mask
from glassformer.models.config import ModelConfig
from glassformer.models.outputs import CausalLMOutput
from glassformer.models.pretrained import PretrainedMixin, build_for_weights
from glassformer.models.quantization import Quantization, dequantized_state_dict
from glassformer.nn.cache import KVCache
from glassformer.nn.config import BlockConfig, StackConfig
from glassformer.nn.layers import zero_init_projections
from glassformer.nn.linear import Linear
from glassformer.nn.slot_cache import DEFAULT_BLOCK, SlotCache
from glassformer.nn.stacks import Stack
from glassformer.options import check_fields


@dataclasses.dataclass
class GPTConfig(ModelConfig):
    """Configuration of ``GPT``; the shape defaults are GPT-2 small (124M).

    ``dropout`` acts on embeddings and sublayer outputs (GPT-2's embd_pdrop / resid_pdrop),
    ``attention_dropout`` on the attention weights (attn_pdrop).

    The Llama options: ``norm`` ("layernorm" | "rmsnorm"), ``positional`` ("learned" | "rope", with
    ``rope_theta``), ``num_kv_heads`` (grouped-query attention; None = ``num_heads``), ``gated_ffn`` (SwiGLU with
    ``activation="silu"``), ``attention_bias`` / ``ffn_bias`` (None = ``bias``). ``GPTConfig.llama(...)`` sets
    them all.
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
    bos_token_id: int | None = None  # GPT-2 uses 50256 (<|endoftext|>) for both
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    norm: str = "layernorm"
    positional: str = "learned"
    rope_theta: float = 10000.0
    num_kv_heads: int | None = None
    gated_ffn: bool = False
    attention_bias: bool | None = None
    ffn_bias: bool | None = None
    qk_norm: bool = False
    zero_init_projections: bool = False

    @classmethod
    def llama(cls, **fields) -> GPTConfig:
        """A Llama-style config: RMSNorm, rotary embeddings, SwiGLU, no biases, no dropout, untied LM head
        (override any field, e.g. ``num_kv_heads`` for grouped-query attention)."""
        llama = dict(
            norm="rmsnorm",
            positional="rope",
            gated_ffn=True,
            activation="silu",
            bias=False,
            attention_bias=False,
            ffn_bias=False,
            dropout=0.0,
            attention_dropout=0.0,
            layer_norm_eps=1e-5,
            tie_embeddings=False,
        )
        return cls(**{**llama, **fields})

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def kv_heads(self) -> int:
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    def stack(self) -> StackConfig:
        """The layer stack: token embeddings (unscaled, no padding row), learned positions added or rotary ones in
        the blocks, ``num_layers`` blocks, a final norm."""
        positional = "learned" if self.positional == "learned" else "none"
        return StackConfig(self.block(), self.num_layers, self.vocab_size, self.max_seq_length, positional,
                           scale_embeddings=False, final_norm=True)  # fmt: skip

    def block(self) -> BlockConfig:
        """Every layer's block: pre-norm, causal self-attention only (the decoder layer without cross-attention)."""
        return BlockConfig(
            d_model=self.d_model, num_heads=self.num_heads, d_ff=self.d_ff, num_kv_heads=self.num_kv_heads,
            norm=self.norm, norm_first=True, layer_norm_eps=self.layer_norm_eps,
            attention_bias=self.bias if self.attention_bias is None else self.attention_bias,
            position="rope" if self.positional == "rope" else "absolute", rope_theta=self.rope_theta,
            activation=self.activation, gated_ffn=self.gated_ffn,
            ffn_bias=self.bias if self.ffn_bias is None else self.ffn_bias, dropout=self.dropout,
            attention_dropout=self.attention_dropout, qk_norm=self.qk_norm,
            zero_init_projections=self.zero_init_projections,
        )  # fmt: skip

    def __post_init__(self) -> None:
        check_fields(self)  # every field's type and range (glassformer.options)
        if self.positional not in ("learned", "rope"):
            raise ValueError(f"unknown positional {self.positional!r}; choose 'learned' or 'rope'")
        self.block()  # validates every block option once, in nn.config
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                raise ValueError(f"{name}={value} is outside the vocabulary [0, {self.vocab_size})")


class GPT(PretrainedMixin, Stack):
    """Decoder-only language model: a ``Stack`` of decoder layers without cross-attention (``glassformer.nn.stacks``)
    and an LM head. ``model(input_ids)`` -> logits ``(batch, seq, vocab_size)``."""

    config_class = GPTConfig
    output_layers = ("lm_head",)  # quantized with the embeddings (models.quantization), not with the layers
    kind = "decoder_only"

    def __init__(self, config: GPTConfig):
        super().__init__(config.stack())
        self.config = config
        self.lm_head = Linear(config.d_model, config.vocab_size, bias=False)
        self.reset_parameters()
        if config.tie_embeddings:
            self.lm_head.weight = self.embedding.weight

    def reset_parameters(self) -> None:
        """GPT-2's initialization: N(0, 0.02) for matrices and embeddings, zero biases, and the projections that
        write into the residual stream (W_O, W_2) scaled down by 1/sqrt(2 · num_layers) — or zero, with
        ``zero_init_projections``."""
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for layer in self.layers:
            for linear in (layer.self_attn.out_proj, layer.ffn.fc2):
                nn.init.normal_(linear.weight, std=0.02 / math.sqrt(2 * self.config.num_layers))
        zero_init_projections(self.layers)

    @property
    def kv_dtype(self) -> torch.dtype:
        """What its caches hold keys and values in by default: ``cache_dtype``, else the model's dtype (its norms',
        float even when the matrices are quantized)."""
        return self.cache_dtype or self.final_norm.weight.dtype

    def make_cache(self, batch: int, max_length: int, dtype: torch.dtype | None = None) -> KVCache:
        """An empty key/value cache for ``batch`` sequences of up to ``max_length`` positions, in ``dtype`` (default:
        ``kv_dtype``)."""
        c = self.config
        device = self.final_norm.weight.device
        return KVCache(c.num_layers, batch, c.kv_heads, max_length, c.head_dim, dtype or self.kv_dtype, device)

    def make_slot_cache(
        self, slots: int, max_length: int, dtype: torch.dtype | None = None, blocks: int | None = None,
        block: int = DEFAULT_BLOCK,
    ) -> SlotCache:  # fmt: skip
        """An empty cache of ``slots`` independent sequences of up to ``max_length`` positions (serving), in a pool of
        ``blocks`` blocks of ``block`` positions (default: every slot's whole ``max_length``)."""
        c, device = self.config, self.final_norm.weight.device
        return SlotCache(c.num_layers, slots, c.kv_heads, max_length, c.head_dim, dtype or self.kv_dtype, device,
                         blocks, block)  # fmt: skip

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        last_token_only: bool = False,
        output_attentions: bool = False,
        logits_at: torch.Tensor | None = None,
    ) -> torch.Tensor | CausalLMOutput:
        """
        Args:
            input_ids: ``(batch, seq)`` token ids (with a cache: only the new tokens).
            attention_mask: ``(batch, past + seq)``, 1/True at real tokens, 0 at padding (left padding for
                batched prompts); positions are counted from each row's first real token.
            cache: a ``KVCache`` from ``make_cache``, filled and advanced by ``seq`` positions; or a ``SlotView`` of
                a ``make_slot_cache`` cache, whose rows of different lengths need their ``attention_mask(seq)``.
            last_token_only: compute logits for the last position only (decoding).
            output_attentions: return a ``CausalLMOutput`` with each layer's weights ``(batch, heads, seq,
                past + seq)``.
            logits_at: ``(batch,)``: compute logits for that position of each row only (right-padded prompts read
                together: each one's last token).

        Returns:
            logits ``(batch, seq, vocab_size)`` (``(batch, 1, vocab_size)`` with ``last_token_only`` or
            ``logits_at``), or a ``CausalLMOutput`` with ``output_attentions``.
        """
        c = self.config
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
        # a whole unpadded sequence: causal without a mask tensor (the fused kernel skips the masked half)
        is_causal = mask is None and past == 0 and seq > 1
        if (seq > 1 or mask is not None) and not is_causal:
            causal = causal_mask(seq, input_ids.device, past)
            mask = causal if mask is None else mask & causal

        # GPT-2: a learned vector added per position; Llama: the rotary angles, shared by every layer
        x = self.embed(input_ids, offset=past, position_ids=position_ids)
        positions = self.position_inputs(x, past, position_ids)
        attentions = []
        for i, layer in enumerate(self.layers):
            layer_cache = cache.layer(i) if cache is not None else None
            x, weights, _ = layer(
                x, self_mask=mask, need_weights=output_attentions, cache=layer_cache, is_causal=is_causal, **positions
            )
            attentions.append(weights)
        if cache is not None:
            cache.advance(seq)
        if last_token_only:
            x = x[:, -1:]
        elif logits_at is not None:
            x = x[torch.arange(batch, device=x.device), logits_at.to(x.device)][:, None]
        logits = self.lm_head(self.final_norm(x))
        return CausalLMOutput(logits, attentions) if output_attentions else logits

    @torch.no_grad()
    def generate(
        self, input_ids: torch.Tensor, generation_config: GenerationConfig | None = None, **options
    ) -> torch.Tensor:
        """Prompt + new tokens, ``(batch, prompt + new)``. ``generation_config`` and ``options`` (its fields as
        keywords, plus ``attention_mask``, ``on_tokens``) as ``glassformer.generation.generate`` takes them;
        ``eos_token_id`` / ``pad_token_id`` default to the config's ``eos_token_id`` / ``pad_token_id``."""
        config = generation_config or GenerationConfig()
        if config.eos_token_id is None:
            options.setdefault("eos_token_id", self.config.eos_token_id)
        if config.pad_token_id is None:
            options.setdefault("pad_token_id", self.config.pad_token_id)
        return generate(self, input_ids, config, **options)

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, dtype: torch.dtype | None = None, quantization: Quantization | None = None
    ) -> GPT:
        """Load a decoder-only checkpoint, from a path, a shortcut (``smollm2``) or, by model name, the local Hugging
        Face cache:

        - a glassformer GPT checkpoint (config.json + model.safetensors);
        - a Hugging Face GPT-2 or Llama directory (config.json + model.safetensors or a weights-only
          pytorch_model.bin);
        - a GGUF file (or a directory holding one): a Llama-architecture model, dequantized to float32 — or, with
          ``quantization``, its Q8_0 / Q4_0 / Q4_1 tensors used as they are (``checkpoints.gguf``).

        Returned in eval mode; ``dtype`` converts the weights (e.g. ``torch.bfloat16``); ``quantization``
        (``models.quantization.Quantization``) quantizes the weights that are still float."""
        config_dict, tensors = load_decoder(path, quantization)
        model = build_for_weights(cls, cls.config_class.from_dict(config_dict), tensors)
        load_state_dict_checked(model, tensors)
        del tensors
        model = model if dtype is None else model.to(dtype)
        if quantization is not None:
            quantization.apply(model)
        runtime.release_free_memory()  # what the conversions on the way freed
        return model.eval()

    def save_pretrained(self, directory: str | os.PathLike, format: str = "glassformer", state_dict=None):
        """``format="glassformer"``: config.json + model.safetensors in glassformer's names;
        ``format="hf"``: a Hugging Face directory that ``transformers`` opens — ``GPT2LMHeadModel`` for a
        GPT-2-style model, ``LlamaForCausalLM`` for a Llama-style one."""
        if format == "glassformer":
            return super().save_pretrained(directory, state_dict)
        if format == "hf":  # Hugging Face's layouts store float weights: quantized ones are dequantized
            weights = dequantized_state_dict(self)
            if self.config.positional == "rope":
                return save_llama(directory, self.config.to_dict(), weights)
            return save_gpt2(directory, self.config.to_dict(), weights)
        raise ValueError(f"unknown checkpoint format {format!r}; use 'glassformer' or 'hf'")

    def save_gguf(self, path: str | os.PathLike, tokenizer, kind: str = "q8_0") -> Path:
        """Write a GGUF file llama.cpp opens (Llama-style models): matrices in ``kind`` ("q8_0" or "q4_0"), norms
        float32, ``tokenizer``'s vocabulary, merges and chat template (``checkpoints.gguf_export``)."""
        c = self.config
        metadata = tokenizer_metadata(tokenizer, c.bos_token_id, c.eos_token_id, c.pad_token_id)
        return write_gguf(path, c.to_dict(), dequantized_state_dict(self), metadata, kind)


def load_decoder(
    path: str | os.PathLike, quantization: Quantization | None = None
) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(GPTConfig dict, glassformer tensors)`` of any decoder-only checkpoint that ``GPT.from_pretrained`` reads
    (a GGUF file's tensors quantized as ``quantization`` asks, straight from its blocks where they map)."""
    location = Path(path) if os.path.isfile(path) else resolve_model_dir(path)  # a shortcut or a cache name too
    gguf_file = find_gguf(location)
    if gguf_file is not None:
        q = quantization or Quantization(None)
        config, tensors, _ = read_gguf(gguf_file, q.kind, q.group_size, q.embeddings)
        return config, tensors
    model_type = read_config(location).get("model_type")
    if model_type == "llama":
        return load_llama(location)
    if model_type in ("gpt", "gpt2"):
        return load_gpt2(location)
    raise ValueError(
        f"{path} holds a model of model_type {model_type!r}; GPT.from_pretrained reads glassformer GPT, GPT-2, "
        "Llama and GGUF checkpoints"
    )
