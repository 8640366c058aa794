"""A whole decoding step of a quantized Llama-style decoder in one operator, ``glassformer::decode_step``
(``csrc/decoder.h``), for a few sequences at once:

    for each layer:   h = RMSNorm_1(x);  [q; k; v] = h [W_Q; W_K; W_V]ᵀ;  q, k = RoPE(q, p), RoPE(k, p)
                      cache[p] = k, v
                      x = x + softmax(s · q Kᵀ) V W_Oᵀ       (grouped-query: head h reads key/value head h / (H / KV))
                      x = x + (SiLU(RMSNorm_2(x) W_gateᵀ) ⊙ RMSNorm_2(x) W_upᵀ) W_2ᵀ
    x = RMSNorm_final(x)

Decoding one token through the modules costs, beside the matrix products, some twenty small operations per layer,
each a Python call and a trip through torch's dispatcher: with weights of 4 bits those outweigh the products. The
operator runs them all in C++ with the quantized products of ``quantized``.

Its arguments are tensors only (``decode_step``): ``weights`` is, per layer, ``[γ_1, γ_2]`` and the ``(codes,
scales, offsets)`` of ``W_QKV, W_O, W_gate_up, W_2`` (offsets None for int8), then the final norm's γ; the cache
``keys`` / ``values`` ``(layers, rows, kv_heads, max_length, head_dim)``; ``positions`` ``(3, batch)``: where each
row writes, the first position it attends to, and its rotary position. ``reference_step`` is the same step in torch
operations — the probe compares the two, and ``tests/generation/test_fused_step.py`` compares the step with the
modules. ``glassformer.generation.fused_step`` gathers these tensors from a model and says when decoding uses it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from glassformer.backends.cpu import extension
from glassformer.backends.cpu.quantized import dequantize, probe_weight

PER_LAYER = 14  # γ_1, γ_2, then (codes, scales, offsets) of W_QKV, W_O, W_gate_up, W_2


def decode_step(
    x, weights, group_sizes, inv_freq, keys, values, positions, first_row, heads, kv_heads, eps, scale,
    one_sequence=False,
):  # fmt: skip
    """The final norm of the hidden states after every layer, ``(batch, 1, d_model)``, for one new token per row
    whose embeddings are ``x`` ``(batch, 1, d_model)``; its keys and values are written into ``keys`` / ``values``
    at rows ``first_row …`` — or, ``one_sequence``, every row at row ``first_row``: the rows are consecutive
    positions of one sequence (a block of tokens, causal within it)."""
    if not extension.load():
        raise RuntimeError(extension.why_not[-1])
    return torch.ops.glassformer.decode_step(
        x, weights, group_sizes, inv_freq, keys, values, positions, first_row, heads, kv_heads, eps, scale,
        one_sequence,
    )  # fmt: skip


def reference_step(
    x, weights, group_sizes, inv_freq, keys, values, positions, first_row, heads, kv_heads, eps, scale,
    one_sequence=False,
):  # fmt: skip
    """``decode_step`` in torch operations, row by row (the formula; slow)."""
    batch, d, head_dim = x.size(0), x.size(-1), keys.size(-1)
    write_at, first, rotary_at = positions.tolist()
    angles = torch.tensor(rotary_at, dtype=torch.float32)[:, None] * inv_freq  # (batch, head_dim / 2)
    cos, sin = angles.cos().repeat(1, 2)[:, None], angles.sin().repeat(1, 2)[:, None]
    h = x.reshape(batch, d)
    for layer in range(len(weights) // PER_LAYER):
        at = layer * PER_LAYER

        def product(i: int, v: torch.Tensor, at: int = at) -> torch.Tensor:  # x W_iᵀ, W_i of this layer
            return F.linear(v, dequantize(*weights[at + 2 + 3 * i : at + 5 + 3 * i]))

        qkv = product(0, F.rms_norm(h, (d,), weights[at], eps)).view(batch, -1, head_dim)
        qk, half = qkv[:, : heads + kv_heads], head_dim // 2
        qk = qk * cos + torch.cat((-qk[..., half:], qk[..., :half]), -1) * sin  # RoPE, rotate-half pairs
        outputs = []
        for r in range(batch):
            row, span = first_row + (0 if one_sequence else r), slice(first[r], write_at[r] + 1)
            keys[layer, row, :, write_at[r]] = qk[r, heads:]
            values[layer, row, :, write_at[r]] = qkv[r, heads + kv_heads :]
            k, v = (t[layer, row, :, span].repeat_interleave(heads // kv_heads, 0) for t in (keys, values))
            outputs.append(F.scaled_dot_product_attention(qk[r, :heads, None], k, v, scale=scale).reshape(-1))
        h = h + product(1, torch.stack(outputs))
        a, b = product(2, F.rms_norm(h, (d,), weights[at + 1], eps)).chunk(2, -1)
        h = h + product(3, F.silu(a) * b)
    return F.rms_norm(h, (d,), weights[-1], eps).view(batch, 1, d)


def probe_arguments(seed: int = 0) -> list:
    """Two layers (int4, then int8 matrices; d_model 64, 4 heads over 2 key/value heads of 16, d_ff 96) and their
    cache for two rows: ``[weights, group_sizes, inv_freq, keys, values]`` (``decode_step``'s)."""
    generator = torch.Generator().manual_seed(seed)
    weights, groups = [], []
    for kind in ("int4", "int8"):
        weights += [1 + torch.randn(64, generator=generator) / 10 for _ in range(2)]
        for n, k in ((128, 64), (64, 64), (192, 64), (64, 96)):
            codes, scales, offsets, _ = probe_weight(kind, n, k, 32, seed=len(weights))
            weights += [codes, scales, offsets]
            groups.append(32)
    weights.append(1 + torch.randn(64, generator=generator) / 10)
    inv_freq = 1.0 / 10000 ** (torch.arange(0, 16, 2).float() / 16)
    keys, values = torch.zeros(2, 2, 2, 8, 16), torch.zeros(2, 2, 2, 8, 16)
    return [weights, groups, inv_freq, keys, values]


def probe() -> None:
    """Four tokens of two rows (the second left-padded at position 0): the operator must give the reference's hidden
    states and cache."""
    ours = probe_arguments()
    theirs = [*ours[:3], ours[3].clone(), ours[4].clone()]
    x = torch.randn(4, 2, 1, 64, generator=torch.Generator().manual_seed(1))
    for position in range(4):
        first = torch.tensor([0, min(1, position)])
        positions = torch.stack((torch.full((2,), position), first, position - first))
        a = decode_step(x[position], *ours, positions, 0, 4, 2, 1e-5, 0.25)
        b = reference_step(x[position], *theirs, positions, 0, 4, 2, 1e-5, 0.25)
        if not (a - b).norm() <= 1e-3 * b.norm():
            raise RuntimeError(f"the fused decoding step differs from its reference at position {position}")
    if not all(torch.allclose(p, q, atol=1e-3) for p, q in zip(ours[3:], theirs[3:], strict=True)):
        raise RuntimeError("the fused decoding step wrote other keys or values than its reference")
