"""A whole decoding step of a quantized decoder in one operator, ``glassformer::decode_step`` (``csrc/decoder.h``), for
a few sequences at once, in Llama's layout or GPT-2's, or an encoder-decoder's decoder (the paper's, T5's):

    for each layer:   h = Norm_1(x);  [q; k; v] = h [W_Q; W_K; W_V]ᵀ (+ b);  q, k = RoPE(q, p), RoPE(k, p) (rotary)
                      cache[p] = k, v
                      x = x + softmax(s · q Kᵀ + B) V W_Oᵀ (+ b)   (grouped-query: head h reads key/value head h/(H/KV);
                                                                  B[p − j]: T5's relative bias by distance, or 0)
                      with a memory: h = Norm_c(x);  x = x + softmax(s · (h W_Qcᵀ) M_Kᵀ) M_V W_Ocᵀ   (cross-attention)
                      x = x + (act(Norm_2(x) W_gateᵀ) ⊙ Norm_2(x) W_upᵀ) W_2ᵀ      gated (Llama: SwiGLU), or
                      x = x + act(Norm_2(x) W_1ᵀ + b_1) W_2ᵀ + b_2                 GPT-2's, the paper's
    x = Norm_final(x)                                            Norm: RMSNorm, or LayerNorm (``layer_norm``, with β)

That is pre-norm; ``post_norm`` (the paper's placement) feeds each sublayer x and norms after its residual,
x = Norm(x + Sublayer(x)), with the same norms, and the final norm may be absent (γ None). ``qk_norm`` divides each
head's query and key by its RMS before the rotation (the memory's keys come normed).

Decoding one token through the modules costs, beside the matrix products, some twenty small operations per layer,
each a Python call and a trip through torch's dispatcher: with weights of 4 bits those outweigh the products. The
operator runs them all in C++ with the quantized products of ``quantized``.

Its arguments are tensors only (``decode_step``): ``weights`` is, per layer, ``[γ_1, β_1, γ_2, β_2]`` and the
``(codes, scales, offsets, bias)`` of ``W_QKV, W_O, W_1, W_2`` (β, offsets and biases None where absent), then the
final norm's ``γ, β``; ``inv_freq`` the rotary frequencies, or empty where the positions were added to the
embeddings (GPT-2); the cache ``keys`` / ``values`` ``(layers, rows, kv_heads, max_length, head_dim)`` — or, with a
``block_table`` ``(rows, blocks per row)`` (a paged cache, ``glassformer.nn.slot_cache``), ``(layers, blocks,
kv_heads, block, head_dim)``, position p of row r in block ``block_table[r, p // block]``;
``positions`` ``(3, batch)``: where each row writes, the first position it attends to, and its rotary position;
``layer_norm``, ``gated``, ``activation`` (``silu``, ``gelu_tanh``, ``gelu``, ``relu``, ``relu2``) the layout. An
encoder-decoder's step also takes its memory: ``memory_keys`` / ``memory_values`` ``(layers, sources, kv_heads,
longest source, head_dim)`` (each layer's cross-attention keys and values), ``memory_lengths`` ``(sources,)`` (the
real positions of each source, from 0), ``copies`` (consecutive rows per source: beam search's beams), and per layer
10 more weights, ``[γ_c, β_c]`` and the ``(codes, scales, offsets, bias)`` of ``W_Qc, W_Oc``; ``position_bias``
``(num_heads, distances)`` is T5's relative bias by distance p − j for the self-attention. ``reference_step`` is the
same step in torch operations — the probe compares the two, and ``tests/generation/test_fused_step.py`` compares the
step with the modules. ``glassformer.generation.fused_step`` gathers these tensors from a model and says when
decoding uses it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from glassformer.backends.cpu import extension
from glassformer.backends.cpu.quantized import dequantize, probe_weight

PER_LAYER = 20  # γ_1, β_1, γ_2, β_2, then (codes, scales, offsets, bias) of W_QKV, W_O, W_1, W_2
PER_LAYER_CROSS = 30  # those, then γ_c, β_c and (codes, scales, offsets, bias) of W_Qc, W_Oc
MATRICES = (4, 8, 12, 16, 22, 26)  # where the codes of W_QKV, W_O, W_1, W_2, W_Qc, W_Oc lie in a layer's weights
# the feed-forward's activation (the operator's; glassformer.nn.activation defines them for the models)
ACTIVATIONS = {
    "silu": F.silu, "gelu_tanh": lambda v: F.gelu(v, approximate="tanh"), "gelu": F.gelu, "relu": F.relu,
    "relu2": lambda v: F.relu(v).square(),
}  # fmt: skip


def decode_step(
    x, weights, group_sizes, inv_freq, keys, values, positions, first_row, heads, kv_heads, eps, scale,
    one_sequence=False, layer_norm=False, gated=True, activation="silu", block_table=None, bf16=False,
    memory_keys=None, memory_values=None, memory_lengths=None, copies=1, position_bias=None, post_norm=False,
    qk_norm=False,
):  # fmt: skip
    """The final norm of the hidden states after every layer, ``(batch, 1, d_model)``, for one new token per row
    whose embeddings are ``x`` ``(batch, 1, d_model)``; its keys and values are written into ``keys`` / ``values``
    at rows ``first_row …`` — or, ``one_sequence``, every row at row ``first_row``: the rows are consecutive
    positions of one sequence (a block of tokens, causal within it). With a ``block_table``, "row" means a row of
    the table. ``bf16``: the products take the activations in bfloat16 where the operator multiplies it (the
    quantized weights' ``activations="bf16"``: ``glassformer.nn.quantization``). With ``memory_keys`` (and its
    values and lengths) every layer also attends to row r's source r // ``copies``."""
    if not extension.load():
        raise RuntimeError(extension.why_not[-1])
    return torch.ops.glassformer.decode_step(
        x, weights, group_sizes, inv_freq, keys, values, positions, first_row, heads, kv_heads, eps, scale,
        one_sequence, layer_norm, gated, activation, block_table, bf16, memory_keys, memory_values, memory_lengths,
        copies, position_bias, post_norm, qk_norm,
    )  # fmt: skip


def reference_step(
    x, weights, group_sizes, inv_freq, keys, values, positions, first_row, heads, kv_heads, eps, scale,
    one_sequence=False, layer_norm=False, gated=True, activation="silu", block_table=None, bf16=False,
    memory_keys=None, memory_values=None, memory_lengths=None, copies=1, position_bias=None, post_norm=False,
    qk_norm=False,
):  # fmt: skip
    """``decode_step`` in torch operations, row by row (the formula; slow); ``bf16``: every product's activations
    and weights rounded to bfloat16 (what the operator's bf16 products compute)."""
    batch, d, head_dim = x.size(0), x.size(-1), keys.size(-1)
    write_at, first, rotary_at = positions.tolist()
    angles = torch.tensor(rotary_at, dtype=torch.float32)[:, None] * inv_freq  # (batch, head_dim / 2)
    cos, sin = angles.cos().repeat(1, 2)[:, None], angles.sin().repeat(1, 2)[:, None]
    act, groups = ACTIVATIONS[activation], heads // kv_heads
    per_layer = PER_LAYER if memory_keys is None else PER_LAYER_CROSS

    def norm(v: torch.Tensor, at: int) -> torch.Tensor:  # γ at weights[at], β after it (none: no norm)
        if weights[at] is None:
            return v
        if layer_norm:
            return F.layer_norm(v, (d,), weights[at], weights[at + 1], eps)
        return F.rms_norm(v, (d,), weights[at], eps)

    h = x.reshape(batch, d)
    for layer in range(len(weights) // per_layer):
        at = layer * per_layer

        def product(i: int, v: torch.Tensor, at: int = at) -> torch.Tensor:  # x W_iᵀ + b_i, W_i of this layer
            codes, scales, offsets, bias = weights[at + MATRICES[i] : at + MATRICES[i] + 4]
            if bf16:
                return F.linear(v.bfloat16().float(), dequantize(codes, scales, offsets).bfloat16().float(), bias)
            return F.linear(v, dequantize(codes, scales, offsets), bias)

        def pre(v: torch.Tensor, at: int) -> torch.Tensor:  # a sublayer's input: Norm(x) pre-norm, x post-norm
            return v if post_norm else norm(v, at)

        def post(v: torch.Tensor, at: int) -> torch.Tensor:  # after its residual: Norm(x) post-norm
            return norm(v, at) if post_norm else v

        qkv = product(0, pre(h, at)).view(batch, -1, head_dim)
        qk, half = qkv[:, : heads + kv_heads], head_dim // 2
        if qk_norm:  # each head's query and key divided by its RMS
            qk = F.rms_norm(qk, (head_dim,), eps=eps)
        if inv_freq.numel():
            qk = qk * cos + torch.cat((-qk[..., half:], qk[..., :half]), -1) * sin  # RoPE, rotate-half pairs
        outputs = []
        for r in range(batch):
            row, span = first_row + (0 if one_sequence else r), slice(first[r], write_at[r] + 1)
            _write(keys, layer, row, write_at[r], qk[r, heads:], block_table)
            _write(values, layer, row, write_at[r], qkv[r, heads + kv_heads :], block_table)
            k, v = (_read(t, layer, row, block_table)[:, span].float().repeat_interleave(groups, 0)
                    for t in (keys, values))  # fmt: skip
            bias = None  # T5's: B[write_at − p] for the positions p it attends to
            if position_bias is not None:
                bias = position_bias[:, write_at[r] - torch.arange(first[r], write_at[r] + 1)][:, None]
            attended = F.scaled_dot_product_attention(qk[r, :heads, None], k, v, attn_mask=bias, scale=scale)
            outputs.append(attended.reshape(-1))
        h = post(h + product(1, torch.stack(outputs)), at)
        if memory_keys is not None:  # cross-attention: row r over its source r // copies's real positions
            q = product(4, pre(h, at + 20)).view(batch, heads, 1, head_dim)
            q = F.rms_norm(q, (head_dim,), eps=eps) if qk_norm else q
            outputs = []
            for r in range(batch):
                source = r // copies
                k, v = (t[layer, source, :, : memory_lengths[source]].repeat_interleave(groups, 0)
                        for t in (memory_keys, memory_values))  # fmt: skip
                outputs.append(F.scaled_dot_product_attention(q[r], k, v, scale=scale).reshape(-1))
            h = post(h + product(5, torch.stack(outputs)), at + 20)
        if gated:
            a, b = product(2, pre(h, at + 2)).chunk(2, -1)
            h = post(h + product(3, act(a) * b), at + 2)
        else:
            h = post(h + product(3, act(product(2, pre(h, at + 2)))), at + 2)
    return norm(h, len(weights) - 2).view(batch, 1, d)


def _write(cache: torch.Tensor, layer: int, row: int, position: int, new: torch.Tensor, table) -> None:
    """Row ``row``'s key (or value) heads ``new`` ``(kv_heads, head_dim)`` at ``position``."""
    if table is None:
        cache[layer, row, :, position] = new
    else:
        block = cache.size(3)
        cache[layer, table[row, position // block], :, position % block] = new


def _read(cache: torch.Tensor, layer: int, row: int, table) -> torch.Tensor:
    """Row ``row``'s keys (or values), ``(kv_heads, positions, head_dim)``: its blocks in table order."""
    if table is None:
        return cache[layer, row]
    return torch.cat(list(cache[layer, table[row]].unbind(0)), 1)


def probe_arguments(seed: int = 0, gpt2: bool = False, cross: bool = False) -> list:
    """Two layers (int4, then int8 matrices; d_model 64, 4 heads over 2 key/value heads of 16, d_ff 96) and their
    cache for two rows: ``[weights, group_sizes, inv_freq, keys, values]`` (``decode_step``'s), in Llama's layout —
    or, ``gpt2``, GPT-2's (LayerNorm's β and every bias drawn at random, no rotation, W_1 not gated); ``cross``: each
    layer with a cross-attention too (its norm, W_Qc and W_Oc; see ``probe_memory``)."""
    generator = torch.Generator().manual_seed(seed)

    def vector(n: int, base: float) -> torch.Tensor:
        return base + torch.randn(n, generator=generator) / 10

    def matrices(kind: str, shapes: tuple) -> None:
        for n, k in shapes:
            codes, scales, offsets, _ = probe_weight(kind, n, k, 32, seed=len(weights))
            weights.extend([codes, scales, offsets, vector(n, 0) if gpt2 else None])
            groups.append(32)

    weights, groups = [], []
    for kind in ("int4", "int8"):
        weights += [vector(64, 1), vector(64, 0) if gpt2 else None, vector(64, 1), vector(64, 0) if gpt2 else None]
        matrices(kind, ((128, 64), (64, 64), (96 if gpt2 else 192, 64), (64, 96)))
        if cross:
            weights += [vector(64, 1), vector(64, 0) if gpt2 else None]
            matrices(kind, ((64, 64), (64, 64)))
    weights += [vector(64, 1), vector(64, 0) if gpt2 else None]
    inv_freq = torch.empty(0) if gpt2 else 1.0 / 10000 ** (torch.arange(0, 16, 2).float() / 16)
    keys, values = torch.zeros(2, 2, 2, 8, 16), torch.zeros(2, 2, 2, 8, 16)
    return [weights, groups, inv_freq, keys, values]


def probe_memory(sources: int = 2, seed: int = 0) -> dict:
    """A memory for ``probe_arguments(cross=True)``'s two rows: ``sources`` (2: one a row, 1: both rows copies of
    one) of up to 5 positions (the second source 3 real ones), as ``decode_step``'s keyword arguments."""
    generator = torch.Generator().manual_seed(seed)
    keys, values = (torch.randn(2, sources, 2, 5, 16, generator=generator) for _ in range(2))
    lengths = torch.tensor([5, 3][:sources])
    return {"memory_keys": keys, "memory_values": values, "memory_lengths": lengths, "copies": 2 // sources}


def probe() -> None:
    """Four tokens of two rows (the second left-padded at position 0), in Llama's layout and in GPT-2's, in Llama's
    with a paged cache (blocks of 4 positions, the rows' blocks out of order; once in float32, once in bfloat16),
    and as the paper's encoder-decoder's decoder (post-norm, no final norm, ReLU, each row over a source of its own):
    the operator must give the reference's hidden states and cache."""
    llama, gpt2, paper = (False, True, "silu"), (True, False, "gelu_tanh"), (True, False, "relu")
    f32, bf16 = torch.float32, torch.bfloat16
    cases = ((False, llama, False, False, f32), (True, gpt2, False, False, f32), (False, llama, True, False, f32),
             (False, llama, True, False, bf16), (True, paper, False, True, f32))  # fmt: skip
    for is_gpt2, layout, paged, cross, dtype in cases:
        ours = probe_arguments(gpt2=is_gpt2, cross=cross)
        memory = {**probe_memory(), "post_norm": True} if cross else {}
        if cross:  # post-norm: no final norm
            ours[0][-2:] = [None, None]
        table = None
        if paged:  # the same 2 rows of 8 positions as 5 blocks of 4: row 0 in blocks 3, 1; row 1 in 0, 4
            ours[3], ours[4] = torch.zeros(2, 5, 2, 4, 16, dtype=dtype), torch.zeros(2, 5, 2, 4, 16, dtype=dtype)
            table = torch.tensor([[3, 1], [0, 4]])
        theirs = [*ours[:3], ours[3].clone(), ours[4].clone()]
        # bfloat16: where the two round a key or value apart, one unit of it (2^-8 to 2^-7), and what that moves
        bound, units = (1e-3, 0.0) if dtype == f32 else (1e-2, 2**-7)
        x = torch.randn(6, 2, 1, 64, generator=torch.Generator().manual_seed(1))
        for position in range(6):
            first = torch.tensor([0, min(1, position)])
            positions = torch.stack((torch.full((2,), position), first, position - first))
            a = decode_step(x[position], *ours, positions, 0, 4, 2, 1e-5, 0.25, False, *layout, table, **memory)
            b = reference_step(x[position], *theirs, positions, 0, 4, 2, 1e-5, 0.25, False, *layout, table, **memory)
            if not (a - b).norm() <= bound * b.norm():
                raise RuntimeError(f"the fused decoding step differs from its reference at position {position}")
        pairs = zip(ours[3:], theirs[3:], strict=True)
        if not all(torch.allclose(p.float(), q.float(), rtol=units, atol=1e-3) for p, q in pairs):
            raise RuntimeError("the fused decoding step wrote other keys or values than its reference")
