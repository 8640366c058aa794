import pytest
import torch

from glassformer import Transformer, TransformerConfig
from glassformer.masks import padding_mask

PAD = 0


def small_model(**overrides) -> Transformer:
    config = dict(
        src_vocab_size=50,
        tgt_vocab_size=40,
        d_model=32,
        num_layers=2,
        num_heads=4,
        d_ff=64,
        max_seq_length=24,
        dropout=0.0,
        pad_token_id=PAD,
    )
    config.update(overrides)
    return Transformer(TransformerConfig(**config)).eval()


def random_ids(batch, length, vocab):
    return torch.randint(1, vocab, (batch, length))


def test_guide_shapes():
    config = TransformerConfig(
        src_vocab_size=10000,
        tgt_vocab_size=10000,
        d_model=300,
        num_layers=12,
        num_heads=4,
        d_ff=2048,
        max_seq_length=512,
    )
    model = Transformer(config).eval()
    src, tgt = random_ids(64, 30, 10000), random_ids(64, 20, 10000)
    with torch.no_grad():
        memory = model.encode(src)
        assert memory.shape == (64, 30, 300)
        assert model(src, tgt).shape == (64, 20, 10000)


VARIANTS = [
    {},
    {"norm_first": True},
    {"activation": "gelu", "positional": "learned"},
    {"share_embeddings": True, "tgt_vocab_size": 50, "tie_output": True},
]


@pytest.mark.parametrize("variant", VARIANTS)
def test_causality(variant):
    """Changing target tokens after position t never changes the logits at positions <= t."""
    model = small_model(**variant)
    src, tgt = random_ids(2, 9, 40), random_ids(2, 8, 40)
    base = model(src, tgt)
    for t in range(7):
        changed = tgt.clone()
        changed[:, t + 1 :] = random_ids(2, 7 - t, 40)
        out = model(src, changed)
        torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_padding_invariance(variant):
    """Changing or extending padding never changes the outputs at real positions, and (by the mask) the
    source padding is hidden from the decoder's cross-attention too."""
    model = small_model(**variant)
    src, tgt = random_ids(1, 6, 40), random_ids(1, 5, 40)
    base = model(src, tgt)
    src_padded = torch.cat([src, torch.zeros(1, 4, dtype=torch.long)], 1)
    tgt_padded = torch.cat([tgt, torch.zeros(1, 3, dtype=torch.long)], 1)
    out = model(src_padded, tgt_padded)
    torch.testing.assert_close(out[:, :5], base, atol=1e-5, rtol=0)
    # what stands in padded positions does not matter either, once the masks say it is padding
    src_mask = torch.zeros(1, 1, 1, 10, dtype=torch.bool)
    src_mask[..., :6] = True
    garbage = src_padded.clone()
    garbage[:, 6:] = random_ids(1, 4, 40)
    out2 = model(garbage, tgt_padded, src_mask=src_mask, memory_mask=src_mask)
    torch.testing.assert_close(out2[:, :5], base, atol=1e-5, rtol=0)


def test_loss_ignores_padding():
    model = small_model()
    src, tgt = random_ids(1, 6, 40), random_ids(1, 6, 40)
    tgt_padded = torch.cat([tgt, torch.zeros(1, 4, dtype=torch.long)], 1)

    def loss(t):
        logits = model(src, t[:, :-1])
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), t[:, 1:].flatten(), ignore_index=PAD)

    torch.testing.assert_close(loss(tgt), loss(tgt_padded), atol=1e-6, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_batch_invariance(variant):
    """A sequence's output is the same alone or inside a padded batch."""
    model = small_model(**variant)
    lengths = [(7, 5), (3, 8), (9, 2)]
    pairs = [(random_ids(1, s, 40), random_ids(1, t, 40)) for s, t in lengths]
    src = torch.zeros(3, 9, dtype=torch.long)
    tgt = torch.zeros(3, 8, dtype=torch.long)
    for i, (s, t) in enumerate(pairs):
        src[i, : s.size(1)], tgt[i, : t.size(1)] = s[0], t[0]
    batched = model(src, tgt)
    for i, (s, t) in enumerate(pairs):
        alone = model(s, t)
        torch.testing.assert_close(batched[i, : t.size(1)], alone[0], atol=1e-5, rtol=0)


def test_encode_decode_equal_forward():
    model = small_model()
    src = torch.tensor([[5, 6, 7, 0]])
    tgt = torch.tensor([[1, 2, 3]])
    memory = model.encode(src)
    torch.testing.assert_close(model.decode(tgt, memory, padding_mask(src, PAD)), model(src, tgt))


def test_output_attentions_shapes():
    model = small_model()
    src, tgt = random_ids(2, 6, 40), random_ids(2, 4, 40)
    memory, enc = model.encoder(src, output_attentions=True)
    _, self_w, cross_w = model.decoder(tgt, memory, output_attentions=True)
    assert [w.shape for w in enc] == [(2, 4, 6, 6)] * 2
    assert [w.shape for w in self_w] == [(2, 4, 4, 4)] * 2
    assert [w.shape for w in cross_w] == [(2, 4, 4, 6)] * 2


def test_tied_weights_share_storage():
    model = small_model(share_embeddings=True, tgt_vocab_size=50, tie_output=True)
    assert model.encoder.embedding.weight is model.decoder.embedding.weight
    assert model.output_projection.weight is model.decoder.embedding.weight


def test_dropout_only_in_training():
    model = small_model(dropout=0.5)
    src, tgt = random_ids(2, 6, 40), random_ids(2, 4, 40)
    torch.testing.assert_close(model(src, tgt), model(src, tgt))
    model.train()
    assert not torch.allclose(model(src, tgt), model(src, tgt))


@pytest.mark.parametrize("field", ["attention_dropout", "activation_dropout"])
def test_extra_dropouts_are_wired(field):
    model = small_model(**{field: 0.5}).train()
    src, tgt = random_ids(2, 6, 40), random_ids(2, 4, 40)
    assert not torch.allclose(model(src, tgt), model(src, tgt))


def test_gradients_flow_to_every_parameter():
    model = small_model().train()
    src, tgt = random_ids(2, 6, 40), random_ids(2, 5, 40)
    model(src, tgt).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize(
    ("make_inputs", "message"),
    [
        (lambda: (torch.tensor([[1, 2, 50]]), torch.tensor([[1, 2]])), "token id 50, outside the vocabulary"),
        (lambda: (torch.tensor([[1, -1]]), torch.tensor([[1, 2]])), "token id -1"),
        (lambda: (torch.tensor([[1, 2]]), torch.tensor([[1, 40]])), "tgt contains token id 40"),
        (lambda: (torch.ones(1, 25, dtype=torch.long), torch.tensor([[1]])), "max_seq_length=24"),
        (lambda: (torch.tensor([[1, 2]]), torch.ones(1, 25, dtype=torch.long)), "max_seq_length=24"),
        (lambda: (torch.tensor([[1.0, 2.0]]), torch.tensor([[1, 2]])), "integer token ids"),
        (lambda: (torch.tensor([1, 2]), torch.tensor([[1, 2]])), r"shape \(batch, seq\)"),
        (lambda: (torch.ones(1, 0, dtype=torch.long), torch.tensor([[1]])), "empty"),
        (lambda: (torch.ones(2, 3, dtype=torch.long), torch.ones(3, 3, dtype=torch.long)), "batch size"),
    ],
)
def test_bad_inputs_raise_value_error(make_inputs, message):
    model = small_model()
    src, tgt = make_inputs()
    with pytest.raises(ValueError, match=message):
        model(src, tgt)


def test_bad_mask_raises_before_the_encoder_runs(monkeypatch):
    model = small_model()
    src, tgt = random_ids(2, 6, 40), random_ids(2, 4, 40)
    monkeypatch.setattr(model.encoder, "forward", lambda *a, **k: pytest.fail("encoder ran"))
    with pytest.raises(ValueError, match="src_mask of shape .* does not broadcast"):
        model(src, tgt, src_mask=torch.ones(2, 1, 1, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="tgt_mask must be a bool tensor"):
        model(src, tgt, tgt_mask=torch.ones(4, 4))
    with pytest.raises(ValueError, match="memory_mask of shape"):
        model(src, tgt, memory_mask=torch.ones(2, 1, 4, 4, dtype=torch.bool))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_with_padding_stays_finite(dtype):
    """No -1e9 constants: masked scores use the dtype's own minimum, so half precision does not overflow."""
    model = small_model().to(dtype)
    src = torch.tensor([[3, 4, 5, 0, 0], [6, 0, 0, 0, 0]])
    tgt = torch.tensor([[1, 7, 0], [1, 0, 0]])
    memory = model.encoder(src, padding_mask(src, PAD))
    memory_reference_path, _ = model.encoder(src, padding_mask(src, PAD), output_attentions=True)
    assert torch.isfinite(memory).all() and torch.isfinite(memory_reference_path).all()
    assert torch.isfinite(model(src, tgt)).all()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"d_model": 30, "num_heads": 4}, "not divisible by num_heads"),
        ({"num_layers": 0}, "num_layers must be a positive integer"),
        ({"dropout": 1.0}, "dropout"),
        ({"activation": "tanh"}, "unknown activation"),
        ({"positional": "rotary"}, "unknown positional"),
        ({"share_embeddings": True}, "share_embeddings needs"),
        ({"pad_token_id": 40}, "pad_token_id=40"),
    ],
)
def test_bad_config(fields, message):
    with pytest.raises(ValueError, match=message):
        small_model(**fields)
