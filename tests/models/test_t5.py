"""T5 from the shared parts, against transformers' T5ForConditionalGeneration on random checkpoints it writes:
T5 v1.0 (ReLU, output tied to the shared embedding and scaled) and v1.1 / Flan-T5 (gated GELU, untied)."""

import pytest
import torch

from glassformer import Transformer, TransformerConfig
from glassformer.nn.relative_position import relative_bucket

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

VOCAB, PAD, EOS = 50, 0, 1  # EOS: T5's, replaced in the checkpoints by a token the random model emits
LAYOUTS = {  # transformers 5 ties the output to the shared embedding in both; v1.1 does not scale before it
    "v1.0": dict(feed_forward_proj="relu", tie_word_embeddings=True),
    "v1.1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False, num_decoder_layers=3),
}


@pytest.fixture(scope="module", params=list(LAYOUTS))
def checkpoint(request, tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, dropout_rate=0.0,
        relative_attention_num_buckets=8, relative_attention_max_distance=20, pad_token_id=PAD, eos_token_id=EOS,
        decoder_start_token_id=PAD, **LAYOUTS[request.param],
    )  # fmt: skip
    hf = transformers.T5ForConditionalGeneration(config).eval()
    # a random T5 rarely emits token 1: end sequences at a token it does emit, so that decoding meets the end
    src, mask = batch(True)
    cache = config.num_decoder_layers == config.num_layers  # see test_decoding_matches_transformers
    with torch.no_grad():
        emitted = torch.cat([
            hf.generate(input_ids=src, attention_mask=mask, max_new_tokens=8, num_beams=beams, eos_token_id=None,
                        use_cache=cache)[:, 1:]
            for beams in (1, 4)
        ])  # fmt: skip
    ends = emitted[emitted > 1]
    hf.config.eos_token_id = hf.generation_config.eos_token_id = int(ends.mode().values)
    directory = tmp_path_factory.mktemp(f"t5-{request.param}")
    hf.save_pretrained(directory)
    return hf, Transformer.from_pretrained(directory), directory


def batch(padded: bool):
    generator = torch.Generator().manual_seed(1)
    src = torch.randint(2, VOCAB, (3, 11), generator=generator)
    mask = torch.ones_like(src)
    if padded:
        mask[1, 7:], mask[2, 4:] = 0, 0
        src = src.masked_fill(mask == 0, PAD)
    return src, mask


def test_the_config_is_t5s(checkpoint):
    _, model, _ = checkpoint
    c = model.config
    assert (c.positional, c.norm, c.attention_scale, c.bias, c.bos_token_id) == ("relative", "rmsnorm", 1.0, False, PAD)
    assert model.encoder.relative_bias.bidirectional and not model.decoder.relative_bias.bidirectional


@pytest.mark.parametrize("padded", [False, True])
def test_encoder_states_and_logits_match_transformers(checkpoint, padded):
    hf, model, _ = checkpoint
    src, mask = batch(padded)
    tgt = torch.cat([torch.full((3, 1), PAD), torch.randint(2, VOCAB, (3, 6))], dim=1)
    with torch.no_grad():
        theirs = hf(input_ids=src, attention_mask=mask, decoder_input_ids=tgt)
        memory = model.encode(src, model.source_mask(src, mask))
        ours = model(src, tgt, attention_mask=mask)
    real = mask.bool()
    assert (theirs.encoder_last_hidden_state - memory)[real].abs().max() <= 1e-4
    assert (theirs.logits - ours).abs().max() <= 1e-4


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize(
    "options", [{}, {"num_beams": 4}, {"num_beams": 4, "length_penalty": 0.6}, {"min_new_tokens": 5}]
)
def test_decoding_matches_transformers(checkpoint, padded, options):
    hf, model, _ = checkpoint
    eos = model.config.eos_token_id
    src, mask = batch(padded)
    # transformers sizes its decoding cache by the encoder's depth: without it where the decoder is deeper
    cache = hf.config.num_decoder_layers == hf.config.num_layers
    with torch.no_grad():
        theirs = hf.generate(
            input_ids=src, attention_mask=mask, max_new_tokens=12, do_sample=False, use_cache=cache,
            pad_token_id=PAD, **options,
        )  # fmt: skip
    ours = model.generate(src, attention_mask=mask, max_new_tokens=12, **options)
    assert ours[:, 0].eq(PAD).all()  # the decoder's start token comes first, as transformers returns it
    assert ours.shape == theirs.shape and until_the_end(ours, eos) == until_the_end(theirs, eos)
    for row in ours.tolist():  # after the end, glassformer pads; transformers' beam search fills with the end token
        assert all(token == PAD for token in row[row.index(eos) + 1 :]) if eos in row[1:] else True


def test_decoding_meets_the_end_of_sequence(checkpoint):
    _, model, _ = checkpoint
    outputs = [
        model.generate(src, attention_mask=mask, max_new_tokens=12, **options)
        for src, mask in (batch(False), batch(True))
        for options in ({}, {"num_beams": 4}, {"num_beams": 4, "length_penalty": 0.6})
    ]
    assert any((out[:, 1:] == model.config.eos_token_id).any() for out in outputs), (
        "no row ended: nothing tested the end"
    )


def until_the_end(ids: torch.Tensor, eos: int) -> list[list[int]]:
    """Each row up to and including its first end token (transformers fills what follows with the end token in
    beam search when the padding id is 0, with the padding id in greedy search)."""
    rows = []
    for row in ids.tolist():
        rows.append(row[: row.index(eos, 1) + 1] if eos in row[1:] else row)
    return rows


def test_cache_equivalence_with_the_relative_bias_offset(checkpoint):
    _, model, _ = checkpoint
    src, mask = batch(True)
    for options in ({}, {"num_beams": 3}):
        cached = model.generate(src, attention_mask=mask, max_new_tokens=10, **options)
        uncached = model.generate(src, attention_mask=mask, max_new_tokens=10, use_cache=False, **options)
        assert torch.equal(cached, uncached)


def test_export_opens_in_transformers_with_the_same_logits(checkpoint, tmp_path):
    hf, model, _ = checkpoint
    model.save_pretrained(tmp_path, format="hf")
    reopened = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    src, mask = batch(True)
    tgt = torch.randint(2, VOCAB, (3, 5))
    with torch.no_grad():
        expected = hf(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits
        torch.testing.assert_close(reopened(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits, expected)
    again = Transformer.from_pretrained(tmp_path)  # and back
    with torch.no_grad():
        torch.testing.assert_close(again(src, tgt, attention_mask=mask), expected, atol=1e-4, rtol=0)


def test_glassformer_format_round_trip(checkpoint, tmp_path):
    _, model, _ = checkpoint
    model.save_pretrained(tmp_path)
    again = Transformer.from_pretrained(tmp_path)
    src, mask = batch(False)
    assert torch.equal(again.generate(src, max_new_tokens=6), model.generate(src, max_new_tokens=6))


def test_relative_buckets_equal_transformers():
    from transformers.models.t5.modeling_t5 import T5Attention

    relative = torch.arange(-300, 300)[None, :] - torch.arange(0, 40)[:, None]
    for bidirectional in (True, False):
        for buckets, distance in ((32, 128), (8, 20)):
            theirs = T5Attention._relative_position_bucket(relative, bidirectional, buckets, distance)
            assert torch.equal(relative_bucket(relative, bidirectional, buckets, distance), theirs)


def test_a_t5_style_model_trains_from_scratch_and_non_t5_models_refuse_the_t5_export(tmp_path):
    torch.manual_seed(0)
    config = TransformerConfig.t5(src_vocab_size=40, tgt_vocab_size=40, d_model=32, num_layers=2, num_heads=4,
                                  d_ff=64, max_seq_length=32, dropout=0.0)  # fmt: skip
    model = Transformer(config)
    src = torch.randint(2, 40, (8, 6))
    tgt = torch.cat([torch.zeros(8, 1, dtype=torch.long), src], 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):  # copy the source
        loss = torch.nn.functional.cross_entropy(model(src, tgt[:, :-1]).flatten(0, 1), tgt[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    paper = Transformer(TransformerConfig(src_vocab_size=40, tgt_vocab_size=40, d_model=16, num_layers=1, num_heads=2,
                                          d_ff=32))  # fmt: skip
    with pytest.raises(ValueError, match="only a T5-style Transformer"):
        paper.save_pretrained(tmp_path / "hf", format="hf")
