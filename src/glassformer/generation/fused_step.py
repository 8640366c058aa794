"""The fused decoding step: a decoder's next-token logits through ``glassformer::decode_step``
(``glassformer.backends.cpu.decoder``: every layer and the final norm in one operator), then the model's own head.

It serves a model when everything fits: ``takes(model)`` — a stack of ``DecoderLayer``s in Llama's layout
(RMSNorm, rotary positions, a SwiGLU feed-forward, no biases) or GPT-2's (LayerNorm, learned positions added to the
embeddings, a GELU feed-forward, biases), or an encoder-decoder's decoder with its sources bound in
(``glassformer.generation.seq2seq.SourceConditionedDecoder``: every layer's cross-attention over its row's source, as
in the paper's layout with sinusoidal positions, post-norm or pre-norm, or T5's with its relative bias) — the norm,
its placement, the gating and the activation the same in every layer —, every matrix quantized in a format the
kernel takes, float32 norms and biases on the CPU, eval mode, and the operator works here (``glassformer env``:
"decoding step"). Where every matrix asks for bfloat16 activations (``activations="bf16"``) the operator's products
take them so (4 or more rows, where it multiplies bfloat16), as the modules' products do.
``step(model, ids, cache, attention_mask)`` then serves one new token per row of a ``KVCache`` (float32, or bfloat16
with ``activations="bf16"``; rows may be left-padded; translation's beams, whose cache beam search reorders between
steps) or a server's ``SlotView`` (its blocks read in place through the view's table), and returns None — the modules
serve that step — for anything else (a mask with a hole, a cache too short, a source whose real tokens are not a
prefix).
``block(model, ids, cache)`` runs n tokens of one sequence (speculative decoding's check) and ``mixed(model, cache,
parts)`` any slots' next tokens — one for a request decoding, a chunk of a prompt being read — as the rows of one
step (the server's chunked prefill inside the decoding step).
``tests/generation/test_fused_step.py`` compares each with the modules.

What it gathers from a model (the list of tensors the operator reads) is made on the first step with a new cache and
kept while the weights stay the same tensors with the same contents.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from glassformer.backends.cpu import decoder
from glassformer.backends.kernels import kernel_works
from glassformer.nn.cache import KVCache
from glassformer.nn.norm import LayerNorm, RMSNorm
from glassformer.nn.quantization import tensor_state
from glassformer.nn.slot_cache import SlotCache, SlotView
from glassformer.nn.validation import check_token_ids


class _Weights:
    """The tensors of a stack in ``glassformer::decode_step``'s order, its dimensions, and the state of every tensor
    read (to see whether they changed since)."""

    def __init__(self, stack: nn.Module):
        layers, final_norm, rotary = stack.layers, stack.final_norm, stack.rotary
        attention, eps = layers[0].self_attn, layers[0].norm1.eps
        self.heads, self.kv_heads, self.eps, self.scale = (
            attention.num_heads,
            attention.num_kv_heads,
            eps,
            attention.scale,
        )
        self.layer_norm, self.gated, self.activation = isinstance(layers[0].norm1, LayerNorm), *_ffn(layers[0].ffn)
        self.cross = layers[0].cross_attn is not None  # an encoder-decoder's decoder: a memory at every step
        self.post_norm = not layers[0].norm_first  # the paper's x = Norm(x + Sublayer(x))
        self.qk_norm = attention.qk_norm  # each head's q and k divided by its RMS (the speedrun's)
        dims = (self.heads, self.kv_heads, attention.d_k, self.scale)
        self.tensors, self.group_sizes, self.read, activations = [], [], [], set()

        def matrix(linear: nn.Module, rows: int | None = None) -> None:  # its (codes, scales, offsets, bias)
            weight, bias = _quantized(linear), _bias(linear)
            activations.add(weight.activations)
            parts = [weight.codes, weight.scales, weight.offsets, bias]
            self.read += parts
            self.tensors += parts if rows is None else [None if t is None else t[:rows] for t in parts]
            self.group_sizes.append(weight.group_size)

        def norm(module: nn.Module) -> None:  # its γ and β (None for an RMSNorm)
            parts = _norm(module, eps, self.layer_norm)
            self.tensors += parts
            self.read += parts

        for layer in layers:
            attn, ffn, cross = layer.self_attn, layer.ffn, layer.cross_attn
            fits = (
                (cross is not None) == self.cross and layer.norm_first != self.post_norm
                and _ffn(ffn) == (self.gated, self.activation)
                and all((a.qk_norm, a.num_heads, a.num_kv_heads, a.d_k, a.scale) == (self.qk_norm, *dims)
                        and a.eps == eps for a in (attn, cross) if a is not None)
            )  # fmt: skip
            if not fits:
                raise ValueError("not a layer the step takes")
            norm(layer.norm1)
            norm(layer.norm3)
            for linear in (attn.qkv_proj, attn.out_proj, ffn.fc1, ffn.fc2):
                matrix(linear)
            if self.cross:  # its norm, then W_Q (the first rows of [W_Q; W_K; W_V]) and W_O
                norm(layer.norm2)
                matrix(cross.qkv_proj, cross.inner)
                matrix(cross.out_proj)
        if final_norm is None:  # a post-norm stack's last layer ends in a norm already
            self.tensors += [None, None]
        else:
            norm(final_norm)
        # the products take bfloat16 activations where every matrix asks for them (activations="bf16") and the
        # operator multiplies them here; else its 16-bit ones
        self.bf16 = activations == {"bf16"} and kernel_works("quantized_native_bf16")
        if rotary is None:  # positions added to the embeddings (GPT-2's learned ones): no rotation in the step
            self.inv_freq = torch.empty(0)
        elif rotary.inv_freq.dtype != torch.float32 or rotary.head_dim != attention.d_k:
            raise ValueError("not rotary positions in float32")
        else:
            self.inv_freq = rotary.inv_freq
        self.position_bias = _bias_by_distance(stack)
        if self.position_bias is not None:
            self.read.append(stack.relative_bias.embedding.weight)
        self.states = [tensor_state(t) for t in self._all()]

    def layout(self) -> tuple:
        """The operator's arguments layer_norm, gated, activation."""
        return self.layer_norm, self.gated, self.activation

    def options(self) -> dict:
        """The operator's keyword arguments of the stack's layout: T5's bias by distance, post-norm, qk_norm."""
        return {"position_bias": self.position_bias, "post_norm": self.post_norm, "qk_norm": self.qk_norm}

    def _all(self) -> list[torch.Tensor]:
        return [t for t in (*self.read, self.inv_freq) if t is not None]

    def is_current(self, stack: nn.Module) -> bool:
        try:
            now = _Weights(stack)
        except (ValueError, AttributeError, TypeError):
            return False
        same = all(a is b for a, b in zip(now.read, self.read, strict=True))
        return same and now.states == self.states and now.bf16 == self.bf16


def _bias_by_distance(stack: nn.Module) -> torch.Tensor | None:
    """A stack's relative position bias (T5's, causal) as the operator takes it: ``B (heads, max_seq_length)``,
    ``B[h, n]`` added to head h's logit of a key n positions before the query; None without one."""
    relative = getattr(stack, "relative_bias", None)
    if relative is None:
        return None
    if relative.bidirectional or relative.embedding.weight.dtype != torch.float32:
        raise ValueError("not a causal relative bias in float32")
    n = stack.max_seq_length  # the query at n − 1 and every key before it: distances n − 1 … 0
    return relative(1, n, n - 1)[0, :, 0].flip(-1).contiguous()


def _quantized(linear: nn.Module):
    """The quantized weight of a ``Linear`` the kernel takes (float16 scales), else a ValueError."""
    weight = getattr(linear, "quantized", None)
    if weight is None or weight.scales.dtype != torch.float16:
        raise ValueError("not a quantized matrix")
    if weight.in_features % 32 or weight.group_size % 32 or not weight.codes.is_contiguous():
        raise ValueError("not a layout the kernel takes")
    return weight


def _float32(tensor: torch.Tensor | None, what: str) -> torch.Tensor | None:
    """``tensor`` (or None) where it is float32 and contiguous on the CPU, else a ValueError."""
    if tensor is None:
        return None
    if tensor.dtype != torch.float32 or not tensor.is_contiguous() or tensor.device.type != "cpu":
        raise ValueError(f"not a float32 {what}")
    return tensor


def _norm(norm: nn.Module, eps: float, layer_norm: bool) -> list:
    """``[γ, β]`` (β None for an RMSNorm) of a norm of the kind the step runs, with this ε, else a ValueError."""
    if not isinstance(norm, LayerNorm if layer_norm else RMSNorm) or norm.eps != eps:
        raise ValueError("not the stack's kind of norm")
    return [_float32(norm.weight, "norm"), _float32(getattr(norm, "bias", None), "norm")]


def _bias(linear: nn.Module) -> torch.Tensor | None:
    return _float32(linear.bias, "bias")


def _ffn(ffn: nn.Module) -> tuple[bool, str]:
    """``(gated, activation)`` of a feed-forward the operator runs, else a ValueError."""
    if ffn.activation not in decoder.ACTIVATIONS:
        raise ValueError(f"no {ffn.activation} in the operator")
    return ffn.gated, ffn.activation


CACHE_DTYPES = (torch.float32, torch.bfloat16)  # what a cache the operator reads and writes may hold
_gathered: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # layers -> their _Weights, or False
_of_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # a cache's storage -> its steps' _Weights
_memories: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # a model with a memory -> the operator's, or False


def _stack(model: nn.Module) -> nn.Module:
    """The stack of decoder layers the step runs: a decoder-only model is its own; a model with a memory bound in
    (``glassformer.generation.seq2seq.SourceConditionedDecoder``) names its ``decoder_stack``."""
    return getattr(model, "decoder_stack", model)


def _logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The model's head on the step's hidden states: ``lm_head``, or an encoder-decoder's ``project``."""
    return model.project(hidden) if hasattr(model, "decoder_stack") else model.lm_head(hidden)


def _weights(model: nn.Module) -> _Weights | None:
    stack = _stack(model)
    kept = _gathered.get(stack.layers)
    if kept and kept.is_current(stack):
        return kept
    try:
        weights = _Weights(stack)
    except (ValueError, AttributeError, TypeError):  # not this kind of decoder: the modules serve it
        weights = None
    _gathered[stack.layers] = weights or False
    return weights


def _memory(model: nn.Module) -> dict | None:
    """The operator's memory arguments for a model with sources bound in (``SourceConditionedDecoder``): every
    layer's cross-attention keys and values stacked, ``(layers, sources, kv_heads, src_len, d_k)``, each source's
    count of real tokens and the rows per source (``copies``); ``{}`` for a decoder-only model; None where the memory
    is not one the operator takes (a source whose real tokens are not a prefix, or none; keys not float32)."""
    cross_kv = getattr(model, "cross_kv", None)
    if cross_kv is None:
        return {}
    kept = _memories.get(model)
    if kept is None:
        mask = model.memory_mask  # (sources, 1, 1, src_len), True = a real token
        keys, values = (torch.stack([kv[i] for kv in cross_kv]).contiguous() for i in (0, 1))
        lengths = mask.flatten(1).sum(-1).cpu()
        prefix = torch.arange(mask.size(-1)) < lengths[:, None]
        fits = keys.dtype == torch.float32 and keys.device.type == "cpu" and int(lengths.min()) >= 1
        kept = False
        if fits and torch.equal(mask.flatten(1).cpu(), prefix):
            kept = {"memory_keys": keys, "memory_values": values, "memory_lengths": lengths, "copies": model.copies}
        _memories[model] = kept
    return kept or None


def takes(model: nn.Module) -> bool:
    """Whether ``step`` serves ``model`` at all: the operator works here and the model is its kind (positions
    rotary, added to the embeddings, or T5's relative bias)."""
    stack = _stack(model)
    positions = [getattr(stack, name, None) for name in ("rotary", "positions", "relative_bias")]
    if all(p is None for p in positions) or stack.training:
        return False
    return kernel_works("quantized_decoder_step") and _weights(model) is not None


def _rows(cache: KVCache | SlotView, batch: int, attention_mask: torch.Tensor | None) -> tuple | None:
    """``(positions (3, batch): write_at, first, rotary_at; the cache's storage; the rows' first index in it; the
    block table, or None)``, or None where the rows are not sequences the step takes: a ``KVCache`` whose rows may
    start with padding (``attention_mask`` ``[0 … 0 1 … 1]``), or a ``SlotView`` with its own mask
    (``view.attention_mask(1)``), whose rows have their blocks reserved."""
    table = None
    if isinstance(cache, KVCache):
        storage, start, length = cache, 0, cache.length
        write_at = torch.full((batch,), length, dtype=torch.long)
        first = torch.zeros(batch, dtype=torch.long)
        if attention_mask is not None:  # left padding: each row's real tokens start at its first 1
            mask = attention_mask.to("cpu", torch.long)
            first = mask.argmax(-1)
            if not torch.equal(mask.sum(-1), length + 1 - first):
                return None
        if storage.keys.size(1) < batch:
            return None
    elif isinstance(cache, SlotView):
        cache.check_room(1)
        storage, start, table = cache.slot_cache, 0, cache.table
        write_at = torch.tensor(cache.row_lengths, dtype=torch.long)
        first = torch.zeros(batch, dtype=torch.long)
        if attention_mask is not None and not torch.equal(attention_mask.cpu().long(), cache.attention_mask(1).cpu()):
            return None
    else:
        return None
    keys = storage.keys
    if keys.dtype not in CACHE_DTYPES or keys.device.type != "cpu" or not keys.is_contiguous():
        return None
    if int(write_at.max()) >= storage.max_length:
        return None
    return torch.stack((write_at, first, write_at - first)), storage, start, table


def _weights_for(model: nn.Module, storage) -> _Weights | None:
    """The gathered weights for steps with this cache's storage (looked at once per cache), or None."""
    weights = _of_cache.get(storage)
    if weights is None:  # the first step with this cache: gathered (or checked) once per generate call, or per server
        weights = _weights(model) if takes(model) else None
        _of_cache[storage] = weights or False
    return weights or None


def block(model: nn.Module, ids: torch.Tensor, cache: KVCache | SlotView):
    """Logits ``(n, vocab_size)`` of the ``n`` tokens ``ids`` ``(1, n)`` of one sequence, run as one block after
    what the cache holds (causal within the block: the operator's ``one_sequence`` rows) — a one-row ``KVCache``, or
    one slot of a server's ``SlotCache`` — the cache advanced by n; or None where the fused step does not take them.
    Speculative decoding checks its drafts with it."""
    if ids.dim() != 2 or ids.size(0) != 1 or torch.is_grad_enabled() or _memory(model) != {}:
        return None
    if isinstance(cache, KVCache) and cache.keys.size(1) == 1:
        storage, table = cache, None
    elif isinstance(cache, SlotView) and len(cache.slot_ids) == 1:
        cache.check_room(ids.size(1))
        storage, table = cache.slot_cache, cache.table
    else:
        return None
    n, keys, length = ids.size(1), storage.keys, cache.length
    if length + n > min(cache.max_length, model.config.max_seq_length):
        return None
    if keys.dtype not in CACHE_DTYPES or keys.device.type != "cpu" or not keys.is_contiguous():
        return None
    weights = _weights_for(model, storage)
    if weights is None:
        return None
    check_token_ids(ids, model.config.vocab_size, None)
    write_at = torch.arange(length, length + n)
    x = _embed(model, ids, weights, write_at[None])
    if x.dtype != torch.float32:
        return None
    positions = torch.stack((write_at, torch.zeros(n, dtype=torch.long), write_at))
    hidden = decoder.decode_step(
        x.view(n, 1, -1), weights.tensors, weights.group_sizes, weights.inv_freq, keys, storage.values, positions,
        0, weights.heads, weights.kv_heads, weights.eps, weights.scale, True, *weights.layout(), table, weights.bf16,
        **weights.options(),
    )  # fmt: skip
    cache.advance(n)
    return _logits(model, hidden)[:, 0]


def mixed(model: nn.Module, cache: SlotCache, parts: list[tuple[int, list[int]]]) -> torch.Tensor | None:
    """Logits ``(len(parts), vocab_size)`` of the last token of each part — a slot of a server's ``SlotCache`` and
    its next tokens: one for a request decoding, a chunk of its prompt for one reading it — all run as the rows of
    one step (every token a row, at its slot's next position; every row's keys and values are written before any row
    attends, and a row attends to its slot's positions up to its own: causal within a chunk), each slot advanced by
    its tokens; or None where the fused step does not take them, and nothing is changed. The slots' blocks must be
    reserved (a ValueError otherwise), each slot at most once."""
    if torch.is_grad_enabled() or not parts or len({slot for slot, _ in parts}) < len(parts) or _memory(model) != {}:
        return None
    keys = cache.keys
    if keys.dtype not in CACHE_DTYPES or keys.device.type != "cpu" or not keys.is_contiguous():
        return None
    weights = _weights_for(model, cache)
    if weights is None:
        return None
    tokens, write_at, part_of, tables = [], [], [], []
    for i, (slot, chunk) in enumerate(parts):
        start, end = cache.lengths[slot], cache.lengths[slot] + len(chunk)
        if not chunk or end > min(cache.max_length, model.config.max_seq_length):
            return None
        if end > len(cache.tables[slot]) * cache.block:
            raise ValueError(f"slot {slot} writes position {end - 1} past its blocks; reserve them first")
        tokens += chunk
        write_at += range(start, end)
        part_of += [i] * len(chunk)
        tables.append(cache.tables[slot] + [0] * (cache.max_blocks - len(cache.tables[slot])))
    ids = torch.tensor(tokens)[:, None]
    check_token_ids(ids, model.config.vocab_size, None)
    at = torch.tensor(write_at)
    positions = torch.stack((at, torch.zeros_like(at), at))
    x = _embed(model, ids, weights, at[:, None])
    if x.dtype != torch.float32:
        return None
    table = torch.tensor(tables)[torch.tensor(part_of)]  # (rows, max_blocks): each row its slot's blocks
    hidden = decoder.decode_step(
        x, weights.tensors, weights.group_sizes, weights.inv_freq, keys, cache.values, positions, 0, weights.heads,
        weights.kv_heads, weights.eps, weights.scale, False, *weights.layout(), table, weights.bf16,
        **weights.options(),
    )  # fmt: skip
    for slot, chunk in parts:
        cache.lengths[slot] += len(chunk)
    last = torch.tensor([len(chunk) for _, chunk in parts]).cumsum(0) - 1
    return _logits(model, hidden[last])[:, 0]


def _embed(model: nn.Module, ids: torch.Tensor, weights: _Weights, position_ids: torch.Tensor) -> torch.Tensor:
    """The new tokens' embeddings: with rotary positions the token embeddings alone (the step rotates), else with
    the positions ``position_ids`` ``(rows, tokens)`` added as the model adds them."""
    stack = _stack(model)
    if weights.inv_freq.numel():
        return stack.embedding(ids)
    return stack.embed(ids, position_ids=position_ids.to(ids.device))


def step(model: nn.Module, ids: torch.Tensor, cache, attention_mask: torch.Tensor | None = None):
    """Logits ``(batch, 1, vocab_size)`` for one new token per row, the cache advanced; the same as the modules give
    (tested step by step), or None where the fused step does not take these rows, and nothing is changed."""
    if ids.dim() != 2 or ids.size(1) != 1 or torch.is_grad_enabled() or cache is None:
        return None
    storage = cache.slot_cache if isinstance(cache, SlotView) else cache
    if not isinstance(storage, KVCache | SlotCache) or cache.length + 1 > model.config.max_seq_length:
        return None
    check_token_ids(ids, model.config.vocab_size, None)
    weights = _weights_for(model, storage)
    if weights is None:  # a model the step does not take: known after one look, nothing more per step
        return None
    memory, rows = _memory(model), _rows(cache, ids.size(0), attention_mask)
    if rows is None or memory is None:
        return None
    positions, storage, start, table = rows
    x = _embed(model, ids, weights, positions[2][:, None])
    if x.dtype != torch.float32:
        return None
    hidden = decoder.decode_step(
        x, weights.tensors, weights.group_sizes, weights.inv_freq, storage.keys, storage.values, positions, start,
        weights.heads, weights.kv_heads, weights.eps, weights.scale, False, *weights.layout(), table, weights.bf16,
        **weights.options(), **memory,
    )  # fmt: skip
    cache.advance(1)
    return _logits(model, hidden)
