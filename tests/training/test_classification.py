"""Fine-tuning a classifier end to end on a tiny labelled file and a tiny BERT the test builds itself."""

import json

import pytest
import torch

from glassformer.models.bert import BertForSequenceClassification
from glassformer.pipelines.text_classifier import TextClassifier
from glassformer.tokenizer import Tokenizer
from glassformer.training.classification import (
    LabelledData,
    classification_train_config,
    label_names,
    train_classifier,
)


def fit(out, tsv, init, **options):
    train = classification_train_config(progress=False, precision="fp32", lr=3e-3, patience=None)
    options = {"epochs": 6, "batch_size": 16, "max_length": 32, "train": train, **options}
    return train_classifier(out, LabelledData(str(tsv)), init=str(init), **options)


def test_fine_tuning_learns_and_the_loss_falls(tiny, tmp_path):
    tsv, init = tiny
    summary = fit(tmp_path / "run", tsv, init)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3
    assert summary["best_valid_accuracy"] >= 0.9
    classifier = TextClassifier.load(tmp_path / "run")
    assert classifier.labels == ["negative", "positive"]
    predictions = classifier.predict(["the film was superb", "the plot was awful"])
    assert [p.label for p in predictions] == ["positive", "negative"]
    assert all(0.5 < p.probability <= 1 for p in predictions)


def test_resume_continues_where_the_run_stopped(tiny, tmp_path):
    tsv, init = tiny
    fit(tmp_path / "run", tsv, init, epochs=1)
    with pytest.raises(ValueError, match="--resume"):
        fit(tmp_path / "run", tsv, init, epochs=1)
    state = json.loads((tmp_path / "run" / "last" / "trainer_state.json").read_text())
    assert state["task"]["position"] > 0
    summary = fit(tmp_path / "run", tsv, init, epochs=2, resume=True)
    assert summary["step"] > state["step"]


def test_label_names_and_bad_labels(tmp_path):
    assert label_names([("positive", "a"), ("negative", "b")]) == ["negative", "positive"]
    assert label_names([("0", "a"), ("2", "b")]) == ["0", "1", "2"]
    with pytest.raises(ValueError, match="outside num_labels=2"):
        label_names([("0", "a"), ("2", "b")], num_labels=2)
    with pytest.raises(ValueError, match="not num_labels=2"):
        label_names([("cat", "a"), ("dog", "b"), ("cow", "c")], num_labels=2)


def test_bad_inputs_are_refused_clearly(tiny, tmp_path):
    tsv, init = tiny
    model = BertForSequenceClassification.from_pretrained(init, num_labels=2, classifier_pooling="mean")
    classifier = TextClassifier(model, Tokenizer.from_pretrained(init), max_length=8)
    with pytest.raises(ValueError, match="empty"):
        classifier.predict(["good film", "  "])
    with pytest.raises(ValueError, match="truncation=True"):
        classifier.logits(["the film was a very good story and the acting was quite fine"], truncation=False)
    assert classifier.logits(["the film was a very good story and the acting was quite fine"]).shape == (1, 2)
    with pytest.raises(FileNotFoundError, match="no such file"):
        LabelledData(str(tmp_path / "missing.tsv")).load()
    gpt = tmp_path / "gpt"
    from glassformer.models.gpt import GPT, GPTConfig

    GPT(GPTConfig(vocab_size=30, max_seq_length=8, d_model=16, num_layers=1, num_heads=2, d_ff=32)).save_pretrained(gpt)
    with pytest.raises(ValueError, match="got model_type 'gpt'; load"):
        BertForSequenceClassification.from_pretrained(gpt)


def test_layer_wise_learning_rate_decay(tiny, tmp_path):
    from glassformer.pipelines.text_classifier import TextClassifier
    from glassformer.training.classification import ClassificationTask
    from glassformer.training.loop import Trainer

    tsv, init = tiny
    model = BertForSequenceClassification.from_pretrained(
        init, num_labels=2, labels=["negative", "positive"], classifier_pooling="mean"
    )
    rows = LabelledData(str(tsv)).load()
    task = ClassificationTask(TextClassifier(model, Tokenizer.from_pretrained(init)), rows["train"], rows["valid"], 8,
                              layer_decay=0.5)  # fmt: skip
    scales = task.lr_scales()
    assert scales["classifier.weight"] == 1.0 and scales["bert.layers.1.ffn.fc1.weight"] == 1.0
    assert scales["bert.layers.0.ffn.fc1.weight"] == 0.5 and scales["bert.embedding.embedding.weight"] == 0.25
    trainer = Trainer(task, classification_train_config(progress=False, lr=1e-3), tmp_path)
    by_scale = {group["lr_scale"]: group for group in trainer.optimizer.param_groups}
    assert set(by_scale) == {1.0, 0.5, 0.25}
    trainer.config = classification_train_config(progress=False, lr=1e-3, max_steps=1, warmup_steps=1)
    trainer.fit()
    assert {g["lr_scale"]: g["lr"] for g in trainer.optimizer.param_groups if g["weight_decay"] > 0} == pytest.approx(
        {1.0: 1e-3, 0.5: 5e-4, 0.25: 2.5e-4}
    )


def test_validation_batches_give_the_same_loss_as_evaluate(tiny):
    from glassformer.training.classification import ClassificationTask

    tsv, init = tiny
    model = BertForSequenceClassification.from_pretrained(
        init, num_labels=2, labels=["negative", "positive"], classifier_pooling="mean"
    )
    rows = LabelledData(str(tsv)).load()
    task = ClassificationTask(TextClassifier(model, Tokenizer.from_pretrained(init)), rows["train"], rows["valid"], 5)
    with torch.no_grad():
        losses = [(task.loss(batch)[0].item(), batch["labels"].numel()) for batch in task.valid_batches()]
        metrics = task.evaluate()
    assert sum(n for _, n in losses) == len(rows["valid"])
    assert sum(loss * n for loss, n in losses) / len(rows["valid"]) == pytest.approx(metrics["valid_loss"], abs=1e-5)
