"""Bert against transformers' BertModel / DistilBertModel and their sequence classifiers, on random checkpoints
that the tests write themselves."""

import pytest
import torch

from glassformer.models.bert import Bert, BertConfig, BertForSequenceClassification, mean_pooling

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

VOCAB = 50
SHAPE = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def batch(padded: bool, segments: bool = False):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, VOCAB, (3, 10), generator=g)
    mask = torch.ones_like(ids)
    if padded:
        mask[1, 6:] = 0
        mask[2, 3:] = 0
        ids[mask == 0] = 0
    types = torch.zeros_like(ids)
    if segments:
        types[:, 5:] = 1
        types[mask == 0] = 0
    return ids, mask, types


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    torch.manual_seed(0)
    hf = transformers.BertForSequenceClassification(transformers.BertConfig(**SHAPE, num_labels=3)).eval()
    directory = tmp_path_factory.mktemp("bert")
    hf.save_pretrained(directory)
    return hf, directory


@pytest.fixture(scope="module")
def distilbert_dir(tmp_path_factory):
    torch.manual_seed(1)
    config = transformers.DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64)
    hf = transformers.DistilBertForSequenceClassification(config).eval()
    directory = tmp_path_factory.mktemp("distilbert")
    hf.save_pretrained(directory)
    return hf, directory


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("segments", [False, True])
def test_hidden_states_and_pooler_match_transformers(bert_dir, padded, segments):
    hf, directory = bert_dir
    model = Bert.from_pretrained(directory)
    ids, mask, types = batch(padded, segments)
    with torch.no_grad():
        theirs = hf.bert(ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
        ours = model(ids, mask, types, output_hidden_states=True, return_pooled=True)
    real = mask.bool()
    assert (theirs.last_hidden_state - ours.last_hidden_state)[real].abs().max() <= 1e-4
    assert (theirs.pooler_output - ours.pooled_output).abs().max() <= 1e-4
    assert len(ours.hidden_states) == len(theirs.hidden_states) == 3
    for a, b in zip(theirs.hidden_states, ours.hidden_states, strict=True):
        assert (a - b)[real].abs().max() <= 1e-4


@pytest.mark.parametrize("padded", [False, True])
def test_classifier_logits_match_transformers(bert_dir, padded):
    hf, directory = bert_dir
    model = BertForSequenceClassification.from_pretrained(directory)
    assert model.config.num_labels == 3
    ids, mask, types = batch(padded, segments=True)
    with torch.no_grad():
        assert (hf(ids, attention_mask=mask, token_type_ids=types).logits - model(ids, mask, types)).abs().max() <= 1e-4


@pytest.mark.parametrize("padded", [False, True])
def test_distilbert_is_a_config_of_the_same_model(distilbert_dir, padded):
    hf, directory = distilbert_dir
    model = BertForSequenceClassification.from_pretrained(directory)
    assert model.config.type_vocab_size == 0 and model.config.pooler_activation == "relu"
    encoder = Bert.from_pretrained(directory)
    ids, mask, _ = batch(padded)
    with torch.no_grad():
        hidden = hf.distilbert(ids, attention_mask=mask).last_hidden_state
        assert (hidden - encoder(ids, mask))[mask.bool()].abs().max() <= 1e-4
        assert (hf(ids, attention_mask=mask).logits - model(ids, mask)).abs().max() <= 1e-4


def test_bare_encoder_checkpoints_load(tmp_path):
    torch.manual_seed(2)
    hf = transformers.BertModel(transformers.BertConfig(**SHAPE), add_pooling_layer=False).eval()
    hf.save_pretrained(tmp_path)
    model = Bert.from_pretrained(tmp_path)
    assert model.pooler is None
    ids, mask, _ = batch(True)
    with torch.no_grad():
        assert (hf(ids, attention_mask=mask).last_hidden_state - model(ids, mask))[mask.bool()].abs().max() <= 1e-4
    # a classifier started from it gets a fresh head over the mean of the real tokens
    classifier = BertForSequenceClassification.from_pretrained(tmp_path, num_labels=2, classifier_pooling="mean")
    assert classifier(ids, mask).shape == (3, 2)


@pytest.mark.parametrize("fixture", ["bert_dir", "distilbert_dir"])
def test_export_opens_in_transformers_with_the_same_outputs(fixture, request, tmp_path):
    hf, directory = request.getfixturevalue(fixture)
    model = BertForSequenceClassification.from_pretrained(directory)
    model.save_pretrained(tmp_path / "hf", format="hf")
    reopened = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    ids, mask, _ = batch(True)
    with torch.no_grad():
        assert (reopened(ids, attention_mask=mask).logits - model(ids, mask)).abs().max() <= 1e-4
    encoder = Bert.from_pretrained(directory)
    if model.config.flavor == "distilbert":
        encoder = Bert.from_pretrained(directory, pooler=False)
    encoder.save_pretrained(tmp_path / "encoder", format="hf")
    bare = transformers.AutoModel.from_pretrained(tmp_path / "encoder").eval()
    with torch.no_grad():
        assert (bare(ids, attention_mask=mask).last_hidden_state - encoder(ids, mask))[mask.bool()].abs().max() <= 1e-4


def test_glassformer_format_round_trip(bert_dir, tmp_path):
    _, directory = bert_dir
    model = BertForSequenceClassification.from_pretrained(directory, labels=["neg", "neu", "pos"])
    model.save_pretrained(tmp_path)
    again = BertForSequenceClassification.from_pretrained(tmp_path)
    assert again.config.label_names == ["neg", "neu", "pos"]
    ids, mask, types = batch(True, True)
    with torch.no_grad():
        assert torch.equal(model(ids, mask, types), again(ids, mask, types))
    assert Bert.from_pretrained(tmp_path).config.num_layers == 2  # the encoder of a classifier checkpoint


def test_attentions_are_returned_per_layer_and_ignore_padding():
    torch.manual_seed(0)
    model = Bert(BertConfig(vocab_size=VOCAB, d_model=16, num_layers=2, num_heads=2, d_ff=32)).eval()
    ids, mask, _ = batch(True)
    out = model(ids, mask, output_attentions=True)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (3, 2, 10, 10)
    assert out.attentions[0][2, :, :, 3:].abs().max() == 0  # row 2 has 3 real tokens
    torch.testing.assert_close(out.attentions[1].sum(-1), torch.ones(3, 2, 10))
    # the fast path (no weights asked for) gives the same hidden states
    torch.testing.assert_close(model(ids, mask), out.last_hidden_state)


def test_mean_pooling_counts_only_real_tokens():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert mean_pooling(hidden, torch.tensor([[1, 1, 0]])).tolist() == [[2.0, 3.0]]


def test_bad_input_is_refused_clearly(bert_dir, tmp_path):
    _, directory = bert_dir
    model = Bert.from_pretrained(directory)
    with pytest.raises(ValueError, match="max_seq_length"):
        model(torch.ones(1, 513, dtype=torch.long))
    with pytest.raises(ValueError, match="vocab"):
        model(torch.tensor([[VOCAB]]))
    with pytest.raises(ValueError, match="token_type_ids"):
        model(torch.ones(1, 3, dtype=torch.long), token_type_ids=torch.full((1, 3), 2))
    with pytest.raises(ValueError, match="token_type_ids has shape"):
        model(torch.ones(2, 3, dtype=torch.long), token_type_ids=torch.zeros(1, 3, dtype=torch.long))
    gpt2 = tmp_path / "gpt2"
    transformers.GPT2Model(transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=20)).save_pretrained(gpt2)
    with pytest.raises(ValueError, match="BERT or DistilBERT"):
        Bert.from_pretrained(gpt2)
    with pytest.raises(ValueError, match="mean"):
        BertForSequenceClassification(
            BertConfig(vocab_size=VOCAB, d_model=16, num_layers=1, num_heads=2, d_ff=32, classifier_pooling="mean")
        ).save_pretrained(tmp_path / "x", format="hf")


def test_weights_only_pytorch_bin_and_old_layer_norm_names(bert_dir, tmp_path):
    """An old-style checkpoint: pytorch_model.bin (read with weights_only=True) and LayerNorm gamma / beta."""
    hf, directory = bert_dir
    renamed = {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
        for k, v in hf.state_dict().items()
    }
    torch.save(renamed, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_bytes((directory / "config.json").read_bytes())
    model = BertForSequenceClassification.from_pretrained(tmp_path)
    ids, mask, types = batch(True, True)
    with torch.no_grad():
        assert (hf(ids, attention_mask=mask, token_type_ids=types).logits - model(ids, mask, types)).abs().max() <= 1e-4
