"""The Llama options of the shared parts against their definitions: RoPE, RMSNorm, grouped-query attention,
SwiGLU."""

import math

import pytest
import torch

from glassformer.nn.attention import MultiHeadAttention
from glassformer.nn.feedforward import PositionWiseFeedForward
from glassformer.nn.norm import RMSNorm, make_norm, rms_norm_reference
from glassformer.nn.rotary import RotaryEmbedding, apply_rotary


def rope_by_definition(x: torch.Tensor, position: int, base: float) -> torch.Tensor:
    """Rotate each pair (x_i, x_{i+d/2}) by the angle position · base^(−2i/d), one pair at a time."""
    d = x.size(-1)
    out = x.clone()
    for i in range(d // 2):
        angle = position * base ** (-2 * i / d)
        a, b = x[..., i], x[..., i + d // 2]
        out[..., i] = a * math.cos(angle) - b * math.sin(angle)
        out[..., i + d // 2] = b * math.cos(angle) + a * math.sin(angle)
    return out


def rotated(x: torch.Tensor, positions: list[int], base: float = 10000.0) -> torch.Tensor:
    """x ``(1, heads, seq, d)`` rotated by ``RotaryEmbedding`` at the given positions."""
    cos, sin = RotaryEmbedding(x.size(-1), base)(torch.tensor([positions]), torch.float64)
    return apply_rotary(x, cos, sin)


def test_rope_is_the_rotation_of_its_definition():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 5, 8, dtype=torch.float64)
    positions = [0, 1, 7, 100, 4095]
    ours = rotated(x, positions, base=500.0)
    for j, m in enumerate(positions):
        torch.testing.assert_close(ours[:, :, j], rope_by_definition(x[:, :, j], m, 500.0), atol=1e-10, rtol=0)
    torch.testing.assert_close(ours[:, :, 0], x[:, :, 0])  # position 0: no rotation
    torch.testing.assert_close(ours.norm(dim=-1), x.norm(dim=-1))  # a rotation keeps lengths


def test_rope_score_depends_only_on_the_offset():
    torch.manual_seed(1)
    q, k = torch.randn(2, 1, 1, 1, 16, dtype=torch.float64).unbind(0)
    scores = {}
    for m, n in [(3, 1), (10, 8), (1002, 1000), (5, 9), (0, 4)]:
        scores[(m, n)] = (rotated(q, [m]) * rotated(k, [n])).sum().item()
    assert scores[(3, 1)] == pytest.approx(scores[(10, 8)], abs=1e-9) == pytest.approx(scores[(1002, 1000)], abs=1e-9)
    assert scores[(5, 9)] == pytest.approx(scores[(0, 4)], abs=1e-9)
    assert scores[(3, 1)] != pytest.approx(scores[(5, 9)], abs=1e-3)
    assert scores[(0, 4)] == pytest.approx((q * rotated(k, [4])).sum().item(), abs=1e-9)  # q · RoPE(k, n − m)


def test_rms_norm_is_its_formula_and_torch_s():
    torch.manual_seed(2)
    x = torch.randn(3, 4, 10) * 3 + 1
    norm = RMSNorm(10, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
    by_hand = norm.weight * x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(norm(x), by_hand)
    torch.testing.assert_close(rms_norm_reference(x, norm.weight, 1e-6), by_hand)
    reference = torch.nn.RMSNorm(10, eps=1e-6)
    reference.weight.data.copy_(norm.weight.data)
    torch.testing.assert_close(norm(x), reference(x))
    half = norm.bfloat16()(x.bfloat16())  # statistics in float32, result in bfloat16
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), by_hand, atol=0.05, rtol=0.02)
    with pytest.raises(ValueError, match="unknown norm"):
        make_norm("groupnorm", 4, 1e-5)


def test_x_with_no_mean_shift_differs_from_layer_norm():
    x = torch.tensor([[2.0, -1.0, 3.0, 0.0]])
    assert not torch.allclose(RMSNorm(4)(x), make_norm("layernorm", 4, 1e-5)(x))
    # RMS of [2, -1, 3, 0] is sqrt(14 / 4)
    torch.testing.assert_close(RMSNorm(4, eps=0.0)(x), x / math.sqrt(3.5))


@pytest.mark.parametrize("need_weights", [False, True])
def test_grouped_query_attention_equals_mha_with_shared_heads(need_weights):
    """GQA with 2 key/value heads for 6 query heads = multi-head attention whose K and V heads are copies: query
    heads 0-2 share key/value head 0, heads 3-5 head 1."""
    torch.manual_seed(3)
    d, heads, kv_heads, d_k = 24, 6, 2, 4
    gqa = MultiHeadAttention(d, heads, num_kv_heads=kv_heads).eval()
    mha = MultiHeadAttention(d, heads).eval()
    w, b = gqa.qkv_proj.weight.data, gqa.qkv_proj.bias.data
    wq, wk, wv = w.split((d, kv_heads * d_k, kv_heads * d_k))
    bq, bk, bv = b.split((d, kv_heads * d_k, kv_heads * d_k))

    def repeat(t):  # (kv_heads * d_k, ...) -> (heads * d_k, ...), each kv head repeated for its group
        return t.reshape(kv_heads, d_k, *t.shape[1:]).repeat_interleave(heads // kv_heads, 0).reshape(heads * d_k, -1)

    mha.qkv_proj.weight.data = torch.cat([wq, repeat(wk), repeat(wv)])
    mha.qkv_proj.bias.data = torch.cat([bq, repeat(bk[:, None])[:, 0], repeat(bv[:, None])[:, 0]])
    mha.out_proj.load_state_dict(gqa.out_proj.state_dict())
    x = torch.randn(2, 7, d)
    mask = torch.ones(7, 7, dtype=torch.bool).tril()
    ours, ours_w = gqa(x, x, x, mask, need_weights=need_weights)
    theirs, theirs_w = mha(x, x, x, mask, need_weights=need_weights)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    if need_weights:
        torch.testing.assert_close(ours_w, theirs_w, atol=1e-6, rtol=0)


def test_gqa_with_as_many_kv_heads_is_plain_mha():
    torch.manual_seed(4)
    plain = MultiHeadAttention(16, 4).eval()
    same = MultiHeadAttention(16, 4, num_kv_heads=4).eval()
    same.load_state_dict(plain.state_dict())
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(same(x, x, x)[0], plain(x, x, x)[0], atol=0, rtol=0)
    with pytest.raises(ValueError, match="num_kv_heads"):
        MultiHeadAttention(16, 4, num_kv_heads=3)


def test_fast_and_reference_paths_agree_with_rotary_and_gqa():
    torch.manual_seed(5)
    attn = MultiHeadAttention(32, 8, num_kv_heads=2, bias=False).eval()
    x = torch.randn(3, 9, 32)
    rotary = RotaryEmbedding(4)(torch.arange(9)[None], torch.float32)
    mask = torch.ones(9, 9, dtype=torch.bool).tril()
    fast, _ = attn(x, x, x, mask, rotary=rotary)
    reference, weights = attn(x, x, x, mask, need_weights=True, rotary=rotary)
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=0)
    assert weights.shape == (3, 8, 9, 9)


def test_swiglu_is_its_formula():
    torch.manual_seed(6)
    ffn = PositionWiseFeedForward(8, 12, activation="silu", gated=True, bias=False)
    x = torch.randn(2, 3, 8)
    gate, up = ffn.fc1.weight.split(12)
    silu = lambda t: t / (1 + torch.exp(-t))  # noqa: E731
    by_hand = (silu(x @ gate.t()) * (x @ up.t())) @ ffn.fc2.weight.t()
    torch.testing.assert_close(ffn(x), by_hand, atol=1e-6, rtol=0)
