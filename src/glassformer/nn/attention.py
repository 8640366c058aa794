"""Attention: the reference formula and the multi-head module built on it.

    Attention(Q, K, V) = softmax(Q Kᵀ · s + B) V          s = 1/sqrt(d_k) (the paper), B = 0 unless a bias is given

    MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W_O,   head_i = Attention(Q W_Q_i, K W_K_i, V W_V_i)

With ``qk_norm`` each head's query and key vectors are RMS-normalized (no learned γ, as in the modded-nanoGPT
speedrun) before the product: softmax(RMS(Q) RMS(K)ᵀ · s), RMS(x) = x / sqrt(mean(x²) + ε) over head_dim — the logits
stay bounded whatever the weights grow to.

Grouped-query attention shares each key/value head among a group of query heads (head_i uses W_K_g, W_V_g with
g = i // group size); rotary position embeddings rotate Q and K by their positions (``glassformer.nn.rotary``); a
relative position bias B (``glassformer.nn.relative_position``, T5) is added to the logits, and T5 uses s = 1.

Masks are boolean, True = may attend (see ``glassformer.masks``). Masked scores are filled with the most
negative number of their dtype, not ``-1e9`` (which overflows float16), and a query row with nothing to
attend to returns zeros instead of NaN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from glassformer.masks import causal_mask
from glassformer.nn.cache import LayerCache
from glassformer.nn.config import BlockConfig
from glassformer.nn.dropout import dropout
from glassformer.nn.linear import Linear
from glassformer.nn.rotary import apply_rotary
from glassformer.nn.validation import check_bias, check_hidden, check_mask


def scaled_dot_product_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain formula, the reference every fast path is tested against.

    Args:
        query: ``(..., q_len, d_k)``.
        key: ``(..., k_len, d_k)``.
        value: ``(..., k_len, d_v)``.
        mask: bool, broadcastable to ``(..., q_len, k_len)``; True = may attend.
        dropout_p: dropout on the attention weights (training only; pass 0 in evaluation).
        scale: s in softmax(Q Kᵀ · s + B); default 1/sqrt(d_k).
        bias: B, added to the logits, broadcastable to ``(..., q_len, k_len)`` (a relative position bias).

    Returns:
        ``(output, weights)``: output ``(..., q_len, d_v)`` and weights ``(..., q_len, k_len)``.
    """
    scale = 1 / math.sqrt(query.size(-1)) if scale is None else scale
    query = query * scale  # Q Kᵀ · s, scaling the smaller tensor
    scores = torch.matmul(query, key.transpose(-2, -1).to(query.dtype))  # (..., q_len, k_len)
    if bias is not None:
        scores = scores + bias.to(scores.dtype)
    if mask is not None:
        # masked scores become exactly 0 after the softmax; a row with nothing to attend to would come out
        # uniform, so it is zeroed explicitly (and its output is zero, not NaN)
        scores.masked_fill_(~mask, torch.finfo(scores.dtype).min)  # in place: scores is a new tensor
    weights = torch.softmax(scores, dim=-1)
    if mask is not None:
        nothing_to_attend = ~mask.any(dim=-1, keepdim=True)  # small: the mask, not the scores
        if nothing_to_attend.any():  # a causal mask never has such a row: skip a pass over the weights
            weights = weights.masked_fill(nothing_to_attend, 0.0)
    if dropout_p > 0.0:
        weights = dropout(weights, dropout_p)
    return torch.matmul(weights.to(value.dtype), value), weights


def _additive_mask(mask: torch.Tensor | None, bias: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bias and a boolean mask as one additive float mask for the fused kernel (masked: the dtype's minimum)."""
    bias = bias.to(dtype)
    if mask is None:
        return bias
    return bias.masked_fill(~mask, torch.finfo(dtype).min)


def _group_rows(q: torch.Tensor, copies: int) -> torch.Tensor:
    """``(rows · copies, heads, q_len, d)`` -> ``(rows, heads, copies · q_len, d)``: each group of ``copies``
    consecutive rows as more queries of one row."""
    batch, heads, q_len, d = q.shape
    return q.view(batch // copies, copies, heads, q_len, d).transpose(1, 2).reshape(-1, heads, copies * q_len, d)


def _ungroup_rows(t: torch.Tensor, copies: int) -> torch.Tensor:
    """``_group_rows``'s inverse: ``(rows, heads, copies · q_len, x)`` -> ``(rows · copies, heads, q_len, x)``."""
    rows, heads, n, x = t.shape
    return t.view(rows, heads, copies, n // copies, x).transpose(1, 2).reshape(rows * copies, heads, n // copies, x)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with a fused projection for Q, K and V, built from a ``BlockConfig``.

    ``qkv_proj.weight`` stacks ``[W_Q; W_K; W_V]`` row-wise, shape ``(inner + 2 * kv_dim, d_model)`` with
    ``inner = num_heads * head_dim`` and ``kv_dim = num_kv_heads * head_dim``; self-attention projects all three
    with one matrix multiply, cross-attention projects Q from the query and K, V from the memory with the
    matching slices. ``out_proj`` is W_O, ``(d_model, inner)``.

    Grouped-query attention (``num_kv_heads`` < ``num_heads``, Ainslie et al. 2023): the query heads form
    ``num_kv_heads`` groups, and every head of group g attends with key/value head g — query head h uses key/value
    head ``h // (num_heads / num_kv_heads)``. Fewer keys and values to project and to cache; with
    ``num_kv_heads == num_heads`` it is plain multi-head attention.

    Rotary position embeddings (``glassformer.nn.rotary``) rotate the queries and the new keys when ``forward``
    is given ``rotary=(cos, sin)``; keys go into the cache already rotated. A relative position bias comes in as
    ``position_bias``.

    Without ``need_weights`` it runs ``torch.nn.functional.scaled_dot_product_attention`` (a fused kernel);
    with it, the reference ``scaled_dot_product_attention`` above, which also returns the weights.

    ``MultiHeadAttention(d_model, num_heads, dropout=0.0, bias=True, num_kv_heads=None)`` is short for the
    ``BlockConfig`` with those fields (``dropout`` is the attention weights' dropout).
    """

    def __init__(
        self,
        config: BlockConfig | int,
        num_heads: int | None = None,
        dropout: float = 0.0,
        bias: bool = True,
        num_kv_heads: int | None = None,
    ):
        super().__init__()
        if not isinstance(config, BlockConfig):
            config = BlockConfig(
                d_model=config, num_heads=num_heads or 1, num_kv_heads=num_kv_heads, attention_bias=bias,
                attention_dropout=dropout,
            )  # fmt: skip
        self.config = config
        self.d_model = config.d_model
        self.num_heads = config.num_heads
        self.num_kv_heads = config.kv_heads
        self.d_k = config.dim_per_head
        self.inner = self.num_heads * self.d_k
        self.kv_dim = self.num_kv_heads * self.d_k
        self.scale = config.scale
        self.dropout = config.attention_dropout
        self.qkv_proj = Linear(config.d_model, self.inner + 2 * self.kv_dim, bias=config.attention_bias)
        self.out_proj = Linear(self.inner, config.d_model, bias=config.attention_bias)  # W_O
        self.qk_norm = config.qk_norm
        self.eps = config.layer_norm_eps

    def project_qkv(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Q W_Q ``(batch, seq, inner)``, K W_K and V W_V ``(batch, seq, kv_dim)``; one matmul when query is key
        is value."""
        q_dim, kv = self.inner, self.kv_dim
        if query is key and key is value:
            return self.qkv_proj(query).split((q_dim, kv, kv), dim=-1)
        proj = self.qkv_proj  # proj.rows(x, a, b): x times rows a:b of [W_Q; W_K; W_V]
        q = proj.rows(query, 0, q_dim)
        if key is value:
            k, v = proj.rows(key, q_dim, q_dim + 2 * kv).split(kv, dim=-1)
            return q, k, v
        return q, proj.rows(key, q_dim, q_dim + kv), proj.rows(value, q_dim + kv, q_dim + 2 * kv)

    def split_heads(self, x: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """``(batch, seq, heads * d_k)`` -> ``(batch, heads, seq, d_k)``; with ``normalize`` (queries and keys under
        ``qk_norm``) each head's vector divided by its RMS, x / sqrt(mean(x²) + ε), one fused kernel."""
        x = x.view(x.size(0), x.size(1), -1, self.d_k)
        if normalize and self.qk_norm:
            x = F.rms_norm(x, (self.d_k,), eps=self.eps)
        return x.transpose(1, 2)

    def project_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of a fixed memory (the encoder output), each ``(batch, kv_heads, src_len, d_k)``: computed
        once per source and passed back as ``kv`` at every decoding step."""
        check_hidden(memory, self.d_model, "memory")
        k, v = self.qkv_proj.rows(memory, self.inner, self.inner + 2 * self.kv_dim).split(self.kv_dim, dim=-1)
        return self.split_heads(k, normalize=True), self.split_heads(v)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None,
        value: torch.Tensor | None,
        mask: torch.Tensor | None = None,
        need_weights: bool = False,
        cache: LayerCache | None = None,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        is_causal: bool = False,
        position_bias: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        Args:
            query: ``(batch, q_len, d_model)``.
            key, value: ``(batch, k_len, d_model)``.
            mask: bool, broadcastable to ``(batch, heads, q_len, k_len)``; True = may attend. With a cache,
                ``k_len`` counts the cached positions too.
            need_weights: also return the attention weights (uses the reference path).
            cache: a layer of ``glassformer.nn.cache.KVCache``; the new keys/values are appended to it and the
                queries attend to all of them.
            kv: precomputed keys and values from ``project_kv`` (cross-attention while decoding); ``key`` and
                ``value`` are then not used and may be None. Their batch may divide the query's: ``copies``
                consecutive query rows share one row of keys (beam search's beams of one source), read once for
                all of them; ``mask`` then has the keys' batch.
            rotary: ``(cos, sin)`` of the query positions from ``glassformer.nn.rotary.RotaryEmbedding``
                (self-attention only: queries and keys share the positions).
            is_causal: the causal mask (query i sees keys j <= i) without building it, for a self-attention over
                a whole sequence with no padding and nothing cached; the fused kernel then skips the masked half
                (flash attention on a GPU). Not together with ``mask``.
            position_bias: added to the logits, broadcastable to ``(batch, heads, q_len, k_len)`` (cached positions
                included), e.g. T5's relative position bias.

        Returns:
            ``(output, weights)``: output ``(batch, q_len, d_model)``; weights ``(batch, heads, q_len, k_len)``
            or None.
        """
        check_hidden(query, self.d_model, "query")
        batch, q_len = query.size(0), query.size(1)
        copies = 1  # query rows per row of keys (kv shared by beams)
        if kv is not None:
            q = self.split_heads(self.qkv_proj.rows(query, 0, self.inner), normalize=True)
            k, v = kv
            k_len, copies = k.size(2), batch // max(k.size(0), 1)
            if k.size(0) * copies != batch or (copies > 1 and (cache is not None or position_bias is not None)):
                raise ValueError(f"{batch} query rows for keys of {k.size(0)}: the keys' batch must divide the query's")
        else:
            check_hidden(key, self.d_model, "key")
            if value is not key:
                check_hidden(value, self.d_model, "value")
                if value.shape[:2] != key.shape[:2]:
                    raise ValueError(
                        f"key and value must have the same batch and length, got {tuple(key.shape)} and "
                        f"{tuple(value.shape)}"
                    )
            if key.size(0) != batch:
                raise ValueError(f"query has batch {batch} but key has batch {key.size(0)}")
            k_len = key.size(1)
            # split heads: (batch, seq, heads * d_k) -> (batch, heads, seq, d_k)
            q, k, v = self.project_qkv(query, key, value)
            q, k, v = self.split_heads(q, normalize=True), self.split_heads(k, normalize=True), self.split_heads(v)
        if rotary is not None:
            cos, sin = rotary
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        past = cache.length if cache is not None else 0
        if is_causal and (mask is not None or q_len != k_len or past > 0):
            raise ValueError("is_causal is for a whole sequence attending to itself: pass a mask instead")
        if mask is not None:
            check_mask(mask, (batch // copies, self.num_heads, q_len, past + k_len))
        if position_bias is not None:
            check_bias(position_bias, (batch, self.num_heads, q_len, past + k_len))
        if cache is not None:
            k, v = cache.update(k, v)  # (batch, kv_heads, past + k_len, d_k)
            if k.dtype != q.dtype:  # a cache kept in less than the model's precision (cache_dtype): widened
                k, v = k.to(q.dtype), v.to(q.dtype)

        if copies > 1:  # a row of keys attended by its copies' queries at once: (kv rows, heads, copies · q_len, d_k)
            q = _group_rows(q, copies)
            if mask is not None and mask.size(-2) > 1:  # a mask per query position: the same for every copy
                mask = mask.repeat(1, 1, copies, 1)
        groups = self.num_heads // self.num_kv_heads
        dropout_p = self.dropout if self.training else 0.0
        cpu_training = q.device.type == "cpu" and torch.is_grad_enabled()
        if is_causal and (position_bias is not None or need_weights):
            mask, is_causal = causal_mask(q_len, q.device), False
        if need_weights or (cpu_training and (dropout_p > 0.0 or q.dtype != torch.float32)):
            # the reference path; also for training on the CPU with attention dropout (torch's kernel has none
            # there and falls back to slower masks) or in half precision, where its backward is slower
            if groups > 1:  # key/value head g serves query heads g * groups ... (g + 1) * groups - 1
                k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
            if is_causal:  # query i may attend to keys j <= i
                mask = causal_mask(q_len, q.device)
            out, weights = scaled_dot_product_attention(q, k, v, mask, dropout_p, self.scale, position_bias)
            weights = weights if need_weights else None
        else:
            attn_mask = mask if position_bias is None else _additive_mask(mask, position_bias, q.dtype)
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=self.scale,
                enable_gqa=groups > 1,
            )  # fmt: skip
            weights = None
        if copies > 1:
            out = _ungroup_rows(out, copies)
            weights = None if weights is None else _ungroup_rows(weights, copies)
        # concatenate heads: (batch, heads, q_len, d_k) -> (batch, q_len, heads * d_k)
        out = out.transpose(1, 2).reshape(batch, q_len, self.inner)
        return self.out_proj(out), weights
