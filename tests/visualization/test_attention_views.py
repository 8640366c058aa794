"""The attention weights each model returns, against a hand computation, and the views built from them."""

import math

import pytest
import torch

from glassformer import GPT, Bert, BertConfig, GPTConfig, Transformer, TransformerConfig
from glassformer.visualization import MAX_TOKENS, attention_views
from glassformer.visualization.attention import readable_tokens


def test_one_layer_gpt_attention_equals_the_hand_computation():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, max_seq_length=8, d_model=8, num_layers=1, num_heads=2, d_ff=16)).eval()
    ids = torch.tensor([[3, 7, 1, 9, 4]])
    attentions = model(ids, output_attentions=True).attentions
    layer = model.layers[0]
    x = model.embedding.embedding.weight[ids[0]] + model.positions.embedding.weight[:5]  # E[ids] + P[positions]
    h = torch.nn.functional.layer_norm(x, (8,), layer.norm1.weight, layer.norm1.bias, 1e-5)  # pre-norm
    q, k, _ = (h @ layer.self_attn.qkv_proj.weight.t() + layer.self_attn.qkv_proj.bias).split(8, dim=-1)
    for head in range(2):
        qh, kh = q[:, 4 * head : 4 * head + 4], k[:, 4 * head : 4 * head + 4]
        scores = qh @ kh.t() / math.sqrt(4)
        scores = scores.masked_fill(~torch.ones(5, 5, dtype=torch.bool).tril(), float("-inf"))  # causal
        torch.testing.assert_close(attentions[0][0, head], scores.softmax(-1), atol=1e-6, rtol=0)


def test_shapes_for_the_three_model_kinds():
    torch.manual_seed(1)
    gpt = GPT(GPTConfig(vocab_size=30, max_seq_length=16, d_model=12, num_layers=3, num_heads=3, d_ff=24)).eval()
    gpt_attentions = gpt(torch.randint(0, 30, (2, 7)), output_attentions=True).attentions
    assert [tuple(a.shape) for a in gpt_attentions] == [(2, 3, 7, 7)] * 3
    bert = Bert(BertConfig(vocab_size=30, max_seq_length=16, d_model=12, num_layers=2, num_heads=4, d_ff=24)).eval()
    out = bert(torch.randint(0, 30, (2, 6)), output_attentions=True)
    assert [tuple(a.shape) for a in out.attentions] == [(2, 4, 6, 6)] * 2
    config = TransformerConfig(src_vocab_size=30, tgt_vocab_size=25, d_model=12, num_layers=2, num_heads=2, d_ff=24)
    seq2seq = Transformer(config).eval()
    src, tgt = torch.randint(1, 30, (2, 9)), torch.randint(1, 25, (2, 5))
    out = seq2seq(src, tgt, output_attentions=True)
    torch.testing.assert_close(out.logits, seq2seq(src, tgt))  # the reference path gives the same logits
    assert [tuple(a.shape) for a in out.encoder_attentions] == [(2, 2, 9, 9)] * 2
    assert [tuple(a.shape) for a in out.decoder_attentions] == [(2, 2, 5, 5)] * 2
    assert [tuple(a.shape) for a in out.cross_attentions] == [(2, 2, 5, 9)] * 2
    assert torch.all(out.decoder_attentions[0][:, :, 0, 1:] == 0)  # causal: the first target token sees itself only


def test_views_of_a_gpt_directory(gpt_dir):
    (view,) = attention_views(gpt_dir, "the cat sat")
    assert view.name == "self" and view.weights.shape == (2, 2, 11, 11)
    assert view.query_tokens[:4] == ["t", "h", "e", "·"]  # a space made visible
    torch.testing.assert_close(view.weights.sum(-1), torch.ones(2, 2, 11))


def test_views_of_a_bert_directory(tiny_classification):
    _, bert_dir = tiny_classification
    (view,) = attention_views(bert_dir, "great movie")
    assert view.query_tokens[0] == "[CLS]" and view.query_tokens[-1] == "[SEP]"
    assert view.special_queries[0] and not view.special_queries[1]
    assert view.weights.shape[:2] == (2, 4)


def test_views_of_a_translation_run(translation_dir):
    views = attention_views(translation_dir, "the cat", target="a dog")
    assert [v.name for v in views] == ["encoder", "decoder", "cross"]
    encoder, decoder, cross = views
    assert encoder.query_tokens == encoder.key_tokens and len(encoder.query_tokens) == len("the cat") + 1  # + EOS
    assert decoder.query_tokens[0] == "<|endoftext|>" and decoder.query_tokens[1:] == list("a·dog")  # BOS + target
    assert cross.query_tokens == decoder.query_tokens and cross.key_tokens == encoder.query_tokens
    assert cross.weights.shape == (2, 2, 6, 8)
    translated = attention_views(translation_dir, "the cat")  # no target: the model translates first
    assert translated[1].query_tokens[0] == "<|endoftext|>"


def test_readable_tokens_of_byte_level_and_wordpiece():
    from glassformer import Tokenizer

    gpt2 = Tokenizer.gpt2()
    tokens, special = readable_tokens(gpt2, gpt2.encode("I love transformers<|endoftext|>\n"))
    assert tokens == ["I", "·love", "·transform", "ers", "<|endoftext|>", "↵"] and special[4]
    minilm = Tokenizer.from_pretrained("minilm")
    tokens, special = readable_tokens(minilm, minilm.encode("unbelievableness"))
    assert tokens[0] == "[CLS]" and special[0] and any(t.startswith("##") for t in tokens)


def test_bad_inputs_are_refused(tmp_path, gpt_dir, char_tokenizer):
    with pytest.raises(ValueError, match="text is empty"):
        attention_views(gpt_dir, "   ")
    config = GPTConfig(vocab_size=char_tokenizer.vocab_size, max_seq_length=1024, d_model=8, num_layers=1, num_heads=2)
    GPT(config).save_pretrained(tmp_path)
    char_tokenizer.save(tmp_path)
    assert attention_views(tmp_path, "a" * MAX_TOKENS)[0].weights.shape[-1] == MAX_TOKENS
    with pytest.raises(ValueError, match=f"limited to {MAX_TOKENS} tokens"):
        attention_views(tmp_path, "a" * (MAX_TOKENS + 1))
    with pytest.raises(ValueError, match="only for translation"):
        attention_views(gpt_dir, "the cat", target="x")
