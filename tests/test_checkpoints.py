import json
import pickle

import pytest
import torch

from glassformer import GPT, GPTConfig, Transformer, TransformerConfig
from glassformer.checkpoints import read_checkpoint, write_checkpoint


def tiny(**overrides):
    fields = dict(
        src_vocab_size=30,
        tgt_vocab_size=30,
        d_model=16,
        num_layers=1,
        num_heads=2,
        d_ff=32,
        max_seq_length=12,
        dropout=0.0,
    )
    fields.update(overrides)
    return Transformer(TransformerConfig(**fields)).eval()


@pytest.mark.parametrize("variant", [{}, {"share_embeddings": True, "tie_output": True, "positional": "learned"}])
def test_round_trip_is_exact(tmp_path, variant):
    model = tiny(**variant)
    model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    loaded = Transformer.from_pretrained(tmp_path / "ckpt")
    assert loaded.config == model.config and not loaded.training
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    src, tgt = torch.tensor([[1, 2, 3]]), torch.tensor([[4, 5]])
    assert torch.equal(model(src, tgt), loaded(src, tgt))
    if variant:
        assert loaded.output_projection.weight is loaded.encoder.embedding.weight


def test_config_json_is_readable(tmp_path):
    tiny().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "transformer" and config["d_model"] == 16 and "glassformer_version" in config


def test_pickle_file_is_refused(tmp_path):
    tiny().save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        Transformer.from_pretrained(tmp_path)


def test_pickle_only_directory_is_refused(tmp_path):
    tiny().save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(tiny().state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"only pickle weights \(pytorch_model.bin\).*never unpickles"):
        Transformer.from_pretrained(tmp_path)


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model directory at .*nope"):
        Transformer.from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        Transformer.from_pretrained(tmp_path)


def test_mismatched_checkpoint_names_every_problem(tmp_path):
    model = tiny()
    config, tensors = model.config.to_dict(), dict(model.state_dict())
    tensors.pop("decoder.layers.0.norm3.bias")
    tensors["encoder.extra.weight"] = torch.zeros(2)
    tensors["output_projection.weight"] = torch.zeros(31, 16)
    write_checkpoint(tmp_path, config, tensors)
    with pytest.raises(ValueError) as info:
        Transformer.from_pretrained(tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert "missing: decoder.layers.0.norm3.bias" in message
    assert "unexpected: encoder.extra.weight" in message
    assert "mis-shaped: output_projection.weight (31, 16) (model wants (30, 16))" in message


def test_config_of_another_size_is_refused(tmp_path):
    tiny().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["d_ff"] = 48
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="mis-shaped: .*fc1.weight"):
        Transformer.from_pretrained(tmp_path)


def test_other_model_type_and_unknown_fields(tmp_path):
    tiny().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "gpt"}))
    with pytest.raises(ValueError, match="holds a 'gpt' model"):
        Transformer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "rotary": True}))
    with pytest.raises(ValueError, match=r"unknown TransformerConfig field\(s\) \['rotary'\]"):
        Transformer.from_pretrained(tmp_path)


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model = tiny()
    model.save_pretrained(tmp_path)
    before = read_checkpoint(tmp_path)[1]

    import glassformer.checkpoints.native as native

    def crash(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(native, "save_file", crash)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1)
    with pytest.raises(KeyboardInterrupt):
        model.save_pretrained(tmp_path)
    after = read_checkpoint(tmp_path)[1]
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def tiny_gpt_rope():
    return GPT(GPTConfig(vocab_size=40, max_seq_length=32, d_model=16, num_layers=2, num_heads=2, d_ff=32,
                         positional="rope", tie_embeddings=True))  # fmt: skip


def tiny_transformer():  # sinusoidal positions, source and target embeddings tied to the output layer
    return Transformer(TransformerConfig(src_vocab_size=40, tgt_vocab_size=40, d_model=16, num_layers=2,
                                         num_heads=2, d_ff=32, max_seq_length=32, share_embeddings=True,
                                         tie_output=True))  # fmt: skip


@pytest.mark.parametrize("build", [tiny_gpt_rope, tiny_transformer], ids=["gpt-rope-tied", "transformer-sinusoidal"])
def test_loading_every_weight_skips_the_random_initialization_and_keeps_ties_and_tables(tmp_path, build, monkeypatch):
    model = build().eval()
    model.save_pretrained(tmp_path)

    def no_initialization(name):
        original = getattr(torch.Tensor, name)

        def initialize(tensor, *args, **kwargs):  # on the meta device (shapes only) it costs nothing: allowed
            if tensor.device.type != "meta":
                raise AssertionError("a weight read from the file was first initialized at random")
            return original(tensor, *args, **kwargs)

        return initialize

    for name in ("normal_", "uniform_"):
        monkeypatch.setattr(torch.Tensor, name, no_initialization(name))
    loaded = type(model).from_pretrained(tmp_path)
    monkeypatch.undo()
    shared = lambda m: len(list(m.named_parameters(remove_duplicate=False))) - len(list(m.parameters()))  # noqa: E731
    assert shared(loaded) == shared(model) > 0  # tied weights are still one tensor
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    for (name, a), b in zip(model.named_buffers(), loaded.buffers(), strict=True):  # the tables not stored
        assert torch.equal(a, b), name
    ids = torch.randint(0, 40, (2, 9))
    args = (ids,) if isinstance(model, GPT) else (ids, ids)
    torch.testing.assert_close(loaded(*args), model(*args))


def test_a_new_classification_head_is_still_initialized(tmp_path):
    from glassformer.models.bert import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=30, max_seq_length=16, d_model=16, num_layers=1, num_heads=2, d_ff=32)
    BertForSequenceClassification(config).bert.save_pretrained(tmp_path)
    torch.manual_seed(3)
    head = BertForSequenceClassification.from_pretrained(tmp_path, num_labels=3).classifier.weight
    assert torch.isfinite(head).all() and 0 < head.std() < 0.2  # a real initialization, not leftover memory
