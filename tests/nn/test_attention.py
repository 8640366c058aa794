import pytest
import torch

from glassformer.masks import causal_mask
from glassformer.nn import MultiHeadAttention, scaled_dot_product_attention


def test_guide_two_word_example():
    q = torch.tensor([[1, 0, 1], [0, 1, 1]])
    k = torch.tensor([[1, 2, 1], [2, 1, 0]])
    v = torch.tensor([[0.5, 0.8], [0.2, 0.3]])
    out, weights = scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(weights, torch.tensor([[0.5, 0.5], [0.7604, 0.2396]]), atol=1e-4, rtol=0)
    torch.testing.assert_close(out, torch.tensor([[0.35, 0.55], [0.4281, 0.6802]]), atol=1e-4, rtol=0)


def test_softmax_worked_example():
    torch.testing.assert_close(
        torch.softmax(torch.tensor([2.0, 4.0, 5.0]), -1), torch.tensor([0.0351, 0.2595, 0.7054]), atol=1e-4, rtol=0
    )


def test_any_leading_dimensions():
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 4)
    out, weights = scaled_dot_product_attention(q, k, v)
    assert out.shape == (2, 3, 5, 4) and weights.shape == (2, 3, 5, 7)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 5))


def test_mask_blocks_keys():
    q, k, v = torch.randn(4, 6), torch.randn(4, 6), torch.randn(4, 6)
    out, weights = scaled_dot_product_attention(q, k, v, causal_mask(4))
    assert torch.all(weights.triu(1) == 0)
    torch.testing.assert_close(out[0], v[0])  # the first query can only see the first key


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fully_masked_row_gives_zeros_not_nan(dtype):
    q, k, v = (torch.randn(1, 2, 3, 4, dtype=dtype) for _ in range(3))
    mask = torch.tensor([[True, False, False], [False, False, False], [True, True, True]])
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    assert not torch.isnan(out).any() and not torch.isnan(weights).any()
    assert torch.all(out[..., 1, :] == 0) and torch.all(weights[..., 1, :] == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mha_fully_masked_row_fast_and_reference(dtype):
    mha = MultiHeadAttention(8, 2).to(dtype).eval()
    x = torch.randn(2, 3, 8, dtype=dtype)
    mask = torch.ones(2, 1, 3, 3, dtype=torch.bool)
    mask[1, :, 1, :] = False
    for need_weights in (False, True):
        out, _ = mha(x, x, x, mask, need_weights=need_weights)
        assert not torch.isnan(out).any()
        # an empty row's context is zero, so the output there is just W_O's bias
        torch.testing.assert_close(out[1, 1], mha.out_proj.bias)


def _padded_mask(batch, q_len, k_len):
    mask = torch.rand(batch, 1, q_len, k_len) > 0.3
    mask[..., 0] = True
    return mask


@pytest.mark.parametrize("kind", ["self", "cross", "separate"])
@pytest.mark.parametrize("masked", [False, True])
def test_fast_path_equals_reference(kind, masked):
    mha = MultiHeadAttention(32, 4).eval()
    x = torch.randn(3, 5, 32)
    memory = torch.randn(3, 7, 32)
    if kind == "self":
        query, key, value = x, x, x
    elif kind == "cross":
        query, key, value = x, memory, memory
    else:
        query, key, value = x, memory, torch.randn(3, 7, 32)
    mask = _padded_mask(3, 5, key.size(1)) if masked else None
    fast, none = mha(query, key, value, mask)
    ref, weights = mha(query, key, value, mask, need_weights=True)
    assert none is None and weights.shape == (3, 4, 5, key.size(1))
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=0)


def test_mha_equals_per_head_formula():
    """Concat(head_1..head_h) W_O with head_i = Attention(Q W_Q_i, K W_K_i, V W_V_i), written out by hand."""
    d, h = 12, 3
    mha = MultiHeadAttention(d, h).eval()
    x = torch.randn(2, 4, d)
    w_q, w_k, w_v = mha.qkv_proj.weight.split(d)
    b_q, b_k, b_v = mha.qkv_proj.bias.split(d)
    heads = []
    for i in range(h):
        s = slice(i * d // h, (i + 1) * d // h)
        head, _ = scaled_dot_product_attention(x @ w_q[s].T + b_q[s], x @ w_k[s].T + b_k[s], x @ w_v[s].T + b_v[s])
        heads.append(head)
    expected = mha.out_proj(torch.cat(heads, -1))
    torch.testing.assert_close(mha(x, x, x)[0], expected, atol=1e-5, rtol=0)


def test_guide_multi_head_shapes():
    mha = MultiHeadAttention(300, 4)
    x = torch.randn(1, 3, 300)
    out, weights = mha(x, x, x, need_weights=True)
    assert out.shape == (1, 3, 300) and weights.shape == (1, 4, 3, 3)


def test_d_model_not_divisible_by_heads():
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        MultiHeadAttention(300, 7)


def test_bad_inputs():
    mha = MultiHeadAttention(8, 2)
    x = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match="shape"):
        mha(torch.randn(3, 8), x, x)
    with pytest.raises(ValueError, match=r"\(batch, seq, 8\)"):
        mha(torch.randn(2, 3, 6), x, x)
    with pytest.raises(ValueError, match="floating-point"):
        mha(torch.ones(2, 3, 8, dtype=torch.long), x, x)
    with pytest.raises(ValueError, match="bool tensor"):
        mha(x, x, x, torch.ones(2, 1, 3, 3))
    with pytest.raises(ValueError, match="does not broadcast"):
        mha(x, x, x, torch.ones(2, 1, 3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="does not broadcast"):
        mha(x, x, x, torch.ones(1, 2, 1, 3, 3, dtype=torch.bool))


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_is_causal_equals_the_causal_mask_on_both_paths(kv_heads):
    """``is_causal=True`` (the fused kernel's own causal mode: flash attention on a GPU) gives what the explicit
    causal mask gives, on the fast path and on the reference path, forward and backward."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4, num_kv_heads=kv_heads)
    x = torch.randn(2, 7, 16, requires_grad=True)
    expected, _ = mha(x, x, x, causal_mask(7))
    (grad_expected,) = torch.autograd.grad(expected.sum(), x)
    out, _ = mha(x, x, x, is_causal=True)
    (grad,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad, grad_expected, atol=1e-5, rtol=1e-5)
    reference, weights = mha(x, x, x, is_causal=True, need_weights=True)
    torch.testing.assert_close(reference, expected, atol=1e-5, rtol=1e-5)
    assert torch.all(weights.triu(1) == 0)


def test_is_causal_is_only_for_a_whole_sequence():
    mha = MultiHeadAttention(8, 2)
    x = torch.randn(1, 3, 8)
    with pytest.raises(ValueError, match="is_causal"):
        mha(x, x, x, causal_mask(3), is_causal=True)
    with pytest.raises(ValueError, match="is_causal"):
        mha(x, torch.randn(1, 5, 8), torch.randn(1, 5, 8), is_causal=True)


def test_mha_refuses_keys_and_values_that_do_not_pair():
    """Different lengths used to run on the fast path and give a different output on each call."""
    mha = MultiHeadAttention(16, 2)
    query = torch.randn(2, 3, 16)
    with pytest.raises(ValueError, match="key and value must have the same batch and length"):
        mha(query, torch.randn(2, 4, 16), torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match="query has batch 2 but key has batch 1"):
        mha(query, torch.randn(1, 4, 16), torch.randn(1, 4, 16))


@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_keys_shared_by_copies_of_a_row_give_what_repeated_keys_give(need_weights, kv_heads):
    """Beam search's beams of one source read its cross-attention keys once: kv (and the mask) with one row per
    group of consecutive query rows give the outputs and weights of kv repeated for every row."""
    torch.manual_seed(0)
    attention = MultiHeadAttention(32, 4, num_kv_heads=kv_heads).eval()
    memory, query = torch.randn(3, 7, 32), torch.randn(3 * 4, 2, 32)
    mask = torch.ones(3, 1, 1, 7, dtype=torch.bool)
    mask[1, ..., 5:] = False  # a padded source
    kv = attention.project_kv(memory)
    repeated = tuple(t.repeat_interleave(4, 0) for t in kv)
    shared, shared_weights = attention(query, None, None, mask, need_weights, kv=kv)
    full, full_weights = attention(query, None, None, mask.repeat_interleave(4, 0), need_weights, kv=repeated)
    torch.testing.assert_close(shared, full)
    if need_weights:
        torch.testing.assert_close(shared_weights, full_weights)
    with pytest.raises(ValueError, match="must divide"):
        attention(query[:10], None, None, None, kv=kv)
