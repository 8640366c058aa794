"""Fine-tuning a BERT encoder to classify texts, with the shared training loop.

    data        the VADER paper's human-rated sentences (``data get sentiment``; movie reviews by default) or the
                user's TSV of ``label<TAB>text`` (split 80/10/10 with a seed)
    model       ``BertForSequenceClassification`` started from pretrained weights (``minilm`` by default, or any
                BERT / DistilBERT directory) with a new head; mean pooling by default (how all-MiniLM-L6-v2 was
                trained to be read), the pooler with ``pooling="pooler"``
    batches     shuffled each epoch; within chunks of 50 batches, texts of similar length go together
    loss        cross-entropy over the labels
    optimizer   AdamW, linear warm-up (6%) then linear decay to 0; the best checkpoint by validation accuracy,
                early stopping after ``patience`` evaluations without a better one

A run directory holds ``classification.json`` (data, labels, lengths), ``metrics.jsonl``, ``best/`` and ``last/``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from glassformer.checkpoints.huggingface import resolve_model_dir
from glassformer.data.sentiment import LABELS, prepare_sentiment, read_tsv, split_rows
from glassformer.models.bert import BertForSequenceClassification
from glassformer.options import check_options
from glassformer.pipelines.text_classifier import TextClassifier
from glassformer.tokenizer import Tokenizer
from glassformer.training import distributed
from glassformer.training.loop import TrainConfig
from glassformer.training.run_directory import check_data_fingerprint, read_run_record
from glassformer.training.train import train as run_training

RUN_FILE = "classification.json"
SORT_CHUNK = 50  # batches per length-sorted chunk


@dataclasses.dataclass
class LabelledData:
    """Where a run's labelled texts come from: ``data`` is "sentiment" (``domain`` movies / amazon / tweets /
    nyt) or the path of a TSV file of ``label<TAB>text`` lines, split with ``split_seed``."""

    data: str = "sentiment"
    domain: str = "movies"
    split_seed: int = 0

    def load(self) -> dict[str, list[tuple[str, str]]]:
        """``{"train": [(label, text), ...], "valid": ..., "test": ...}``."""
        if self.data == "sentiment":
            paths = prepare_sentiment(self.domain, self.split_seed)
            return {split: read_tsv(path) for split, path in paths.items()}
        if not Path(self.data).is_file():
            raise FileNotFoundError(f"unknown data {self.data!r} and no such file; use 'sentiment' or a TSV file")
        splits = split_rows(read_tsv(self.data), self.split_seed)
        if not splits["valid"]:
            raise ValueError(f"{self.data} is too small to hold out a validation split; give at least 10 lines")
        return splits


def label_names(rows: list[tuple[str, str]], num_labels: int | None = None) -> list[str]:
    """The classes, index = class id: ``negative, positive`` for sentiment, ``0 .. num_labels - 1`` for integer
    labels, else the sorted names seen."""
    seen = {label for label, _ in rows}
    if seen <= set(LABELS):
        return list(LABELS)
    if all(label.lstrip("-").isdigit() for label in seen):
        count = num_labels or max(int(label) for label in seen) + 1
        for label in sorted(seen, key=int):
            if not 0 <= int(label) < count:
                raise ValueError(f"label {label} is outside num_labels={count}; labels must be 0 .. {count - 1}")
        return [str(i) for i in range(count)]
    names = sorted(seen)
    if num_labels is not None and len(names) != num_labels:
        raise ValueError(f"the data has {len(names)} labels {names}, not num_labels={num_labels}")
    return names


def label_ids(rows: list[tuple[str, str]], names: list[str], split: str) -> list[int]:
    index = {name: i for i, name in enumerate(names)}
    for label, text in rows:
        if label not in index:
            raise ValueError(f"the {split} split has label {label!r} ({text[:40]!r}), not one of {names}")
    return [index[label] for label, _ in rows]


class ClassificationTask:
    """Batches of tokenized texts and their class ids for the training loop; ``batch_size`` texts per step in
    all, of which each process trains on its ``shard``."""

    shard = distributed.Shard()  # this process's part of each batch (the Trainer sets it)

    def __init__(
        self,
        classifier: TextClassifier,
        train_rows: list[tuple[str, str]],
        valid_rows: list[tuple[str, str]],
        batch_size: int,
        seed: int = 0,
        layer_decay: float = 1.0,
    ):
        self.classifier = classifier
        self.layer_decay = layer_decay
        self.model = classifier.model
        if self.model.config.classifier_pooling == "mean" and self.model.bert.pooler is not None:
            self.model.bert.pooler.requires_grad_(False)  # unused by mean pooling (DDP wants every parameter used)
        names = classifier.labels
        self.train_texts, self.train_labels = [t for _, t in train_rows], label_ids(train_rows, names, "training")
        self.valid_texts, self.valid_labels = [t for _, t in valid_rows], label_ids(valid_rows, names, "validation")
        self.lengths = [len(ids) for ids in classifier.tokenizer.encode(self.train_texts)]
        self.batch_size, self.seed = batch_size, seed
        self.epoch, self.position = 0, 0
        self.batches = self._epoch_batches(0)

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        """A shuffled order, cut into chunks of ``SORT_CHUNK`` batches sorted by length, batches shuffled."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(len(self.train_texts), generator=generator).tolist()
        chunk, batches = self.batch_size * SORT_CHUNK, []
        for start in range(0, len(order), chunk):
            part = sorted(order[start : start + chunk], key=lambda i: self.lengths[i])
            batches += [part[i : i + self.batch_size] for i in range(0, len(part), self.batch_size)]
        return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]

    @property
    def batches_per_epoch(self) -> int:
        return len(self.batches)

    def train_batch(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        if self.position >= len(self.batches):
            self.epoch, self.position = self.epoch + 1, 0
            self.batches = self._epoch_batches(self.epoch)
        index = self.shard.take(self.batches[self.position])
        self.position += 1
        return self._batch([self.train_texts[i] for i in index], [self.train_labels[i] for i in index])

    def _batch(self, texts: list[str], labels: list[int]) -> dict[str, torch.Tensor]:
        c = self.classifier
        batch = c.tokenizer.batch_encode(texts, max_length=c.max_length, truncation=True)
        batch["labels"] = torch.tensor(labels)
        return batch

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        logits = self.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        return F.cross_entropy(logits.float(), batch["labels"]), batch["labels"].numel()

    def valid_batches(self):
        """The validation split in order, ``batch_size`` texts at a time (``evaluate`` is what the loop uses)."""
        for start in range(0, len(self.valid_texts), self.batch_size):
            end = start + self.batch_size
            yield self._batch(self.valid_texts[start:end], self.valid_labels[start:end])

    def evaluate(self) -> dict[str, float]:
        """Loss, accuracy and macro-F1 on the validation split."""
        logits = self.classifier.logits(self.valid_texts)
        labels = torch.tensor(self.valid_labels)
        return {"valid_loss": F.cross_entropy(logits, labels).item(), **classification_scores(logits, labels, "valid_")}

    def lr_scales(self) -> dict[str, float]:
        """Layer-wise learning-rate decay: the head and the top layer at the full rate, each layer below at
        ``layer_decay`` times the one above, the embeddings below the lowest layer (Sun et al., 2019)."""
        if self.layer_decay == 1.0:
            return {}
        num_layers = self.model.config.num_layers
        scales = {}
        for name, _ in self.model.named_parameters():
            if name.startswith("bert.layers."):
                depth = num_layers - 1 - int(name.split(".")[2])  # 0 for the top layer
            elif name.startswith("bert.") and not name.startswith("bert.pooler."):
                depth = num_layers  # embeddings
            else:
                depth = 0  # pooler and classifier
            scales[name] = self.layer_decay**depth
        return scales

    def save(self, directory: Path, weights: dict[str, torch.Tensor] | None = None) -> None:
        self.model.save_pretrained(directory, state_dict=weights)
        self.classifier.tokenizer.save(directory)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self.batches = self._epoch_batches(self.epoch)


def classification_scores(logits: torch.Tensor, labels: torch.Tensor, prefix: str = "") -> dict[str, float]:
    """Accuracy and macro-averaged F1 (scikit-learn's) of the argmax predictions."""
    from sklearn.metrics import f1_score

    predictions = logits.argmax(-1)
    return {
        f"{prefix}accuracy": (predictions == labels).float().mean().item(),
        f"{prefix}f1": float(f1_score(labels.numpy(), predictions.numpy(), average="macro")),
    }


@dataclasses.dataclass
class ClassifierRun:
    """A fine-tuning run (``glassformer.training.train``'s spec): a pretrained BERT-style encoder (``init``) with a
    new classification head on labelled texts, for ``epochs`` passes; warm-up is a fraction of all steps, and the
    run is evaluated ``evals_per_epoch`` times an epoch, keeping the best accuracy."""

    data: LabelledData | None = None
    init: str = "minilm"
    pooling: str = "mean"
    num_labels: int | None = None
    epochs: float = 4.0
    batch_size: int = 32
    max_length: int = 128
    dropout: float = 0.1
    warmup: float = 0.06
    evals_per_epoch: int = 2
    layer_decay: float = 1.0
    kind, run_file = "classification", RUN_FILE

    def __post_init__(self) -> None:  # before any work: one line naming the bad option
        check_options(
            num_labels=self.num_labels, epochs=self.epochs, batch_size=self.batch_size, max_length=self.max_length,
            dropout=self.dropout, warmup=self.warmup, evals_per_epoch=self.evals_per_epoch,
            layer_decay=self.layer_decay,
        )  # fmt: skip
        if self.pooling not in ("mean", "pooler"):
            raise ValueError(f"unknown pooling {self.pooling!r}; choose 'mean' or 'pooler'")
        self.data = self.data or LabelledData()

    def default_config(self) -> TrainConfig:
        return classification_train_config()

    def data_path(self) -> str | None:
        return self.data.data

    def restore(self, record: dict) -> None:
        self.data, self.max_length = LabelledData(**record["data"]), record["max_length"]
        self.batch_size, self.layer_decay = record["batch_size"], record.get("layer_decay", self.layer_decay)

    def build(self, out: Path, resume: bool, world, config: TrainConfig) -> tuple[ClassificationTask, TrainConfig]:
        distributed.check_divisible("batch_size", self.batch_size, world)
        splits = self.data.load()
        if resume:
            model = BertForSequenceClassification.from_pretrained(out / "last")
            tokenizer = Tokenizer.from_pretrained(out / "last")
        else:
            names = label_names(splits["train"] + splits["valid"] + splits["test"], self.num_labels)
            directory = resolve_model_dir(self.init)
            torch.manual_seed(config.seed)  # the new head's weights depend on the seed only
            model = BertForSequenceClassification.from_pretrained(
                directory, num_labels=len(names), labels=names, classifier_pooling=self.pooling,
                dropout=self.dropout, attention_dropout=self.dropout, classifier_dropout=None,
            )  # fmt: skip
            tokenizer = Tokenizer.from_pretrained(directory)
        if self.max_length > model.config.max_seq_length:
            raise ValueError(
                f"max_length={self.max_length} exceeds the model's {model.config.max_seq_length} positions"
            )
        classifier = TextClassifier(model, tokenizer, self.max_length)
        task = ClassificationTask(
            classifier, splits["train"], splits["valid"], self.batch_size, config.seed, self.layer_decay
        )
        steps = max(1, math.ceil(self.epochs * task.batches_per_epoch))
        config = dataclasses.replace(
            config,
            max_steps=steps,
            warmup_steps=max(1, round(self.warmup * steps)),
            eval_every=max(task.batches_per_epoch // max(self.evals_per_epoch, 1), 1),
            best_metric="valid_accuracy",
        )
        return task, config

    def record(self, task: ClassificationTask) -> dict:
        return {
            "data": dataclasses.asdict(self.data), "init": str(self.init), "labels": task.model.config.label_names,
            "max_length": self.max_length, "batch_size": self.batch_size, "epochs": self.epochs,
            "layer_decay": self.layer_decay,
        }  # fmt: skip

    def summary(self, task: ClassificationTask) -> dict:
        return {
            "epochs": task.epoch + task.position / task.batches_per_epoch,
            "train_texts": len(task.train_texts),
            "parameters": sum(p.numel() for p in task.model.parameters()),
        }


def train_classifier(
    out: str | Path,
    data: LabelledData | None = None,
    init: str = "minilm",
    pooling: str = "mean",
    num_labels: int | None = None,
    epochs: float = 4.0,
    batch_size: int = 32,
    max_length: int = 128,
    dropout: float = 0.1,
    warmup: float = 0.06,
    evals_per_epoch: int = 2,
    layer_decay: float = 1.0,
    train: TrainConfig | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Fine-tune a classifier into ``out`` (the options are ``ClassifierRun``'s); returns the final step, validation
    metrics and model size. ``train`` sets the optimizer and schedule; its ``max_steps``, ``warmup_steps`` and
    ``eval_every`` are derived from ``epochs``, ``warmup`` and ``evals_per_epoch``."""
    spec = ClassifierRun(
        data, init, pooling, num_labels, epochs, batch_size, max_length, dropout, warmup, evals_per_epoch, layer_decay
    )
    return run_training(spec, train, out, resume)


def classification_train_config(**overrides) -> TrainConfig:
    """Fine-tuning defaults: AdamW lr 1e-4, weight decay 0.01, warm-up 6% of the steps, linear decay to 0,
    clip 1.0, early stopping after 3 evaluations (1.5 epochs) without a better accuracy, at most 15 minutes; the
    device and precision ``auto`` (bf16 autocast where the hardware computes in it natively)."""
    defaults = dict(
        lr=1e-4, schedule="linear", min_lr_ratio=0.0, weight_decay=0.01, betas=(0.9, 0.999),
        grad_clip=1.0, patience=3, log_every=10, max_minutes=15.0,
    )  # fmt: skip
    return TrainConfig(**{**defaults, **overrides})


def evaluate_classifier(
    run: str | Path,
    split: str = "test",
    data: str | None = None,
    baselines: bool = True,
    device: str | None = None,
    precision: str | None = None,
) -> dict[str, Any]:
    """Accuracy and F1 of a ``train classify`` run on a split of its data (or every row of the TSV ``data``),
    next to VADER's rules and TF-IDF + logistic regression fitted on the run's training split. The model runs on
    ``device`` in ``precision`` (default the CPU in float32)."""
    import time

    from glassformer.training.baselines import label_scores, tfidf_logistic_regression_labels, vader_labels

    run = Path(run)
    if not (run / RUN_FILE).is_file():
        raise FileNotFoundError(f"{run} has no {RUN_FILE}; pass the run directory of `train classify`")
    classifier = TextClassifier.load(run, device, precision)
    record = read_run_record(run / RUN_FILE)
    check_data_fingerprint(record.get("data_sha256"), record["data"]["data"])
    splits = LabelledData(**record["data"]).load()
    if data is not None:
        rows, split = read_tsv(data), Path(data).stem
    elif split in splits:
        rows = splits[split]
    else:
        raise ValueError(f"unknown split {split!r}; choose train, valid or test")
    texts, expected = [t for _, t in rows], [label for label, _ in rows]
    label_ids(rows, classifier.labels, split)  # refuses labels the model does not know
    start = time.perf_counter()
    predicted = [p.label for p in classifier.predict(texts)]
    result: dict[str, Any] = {"split": split, "texts": len(rows), "model": label_scores(predicted, expected)}
    result["seconds"] = round(time.perf_counter() - start, 1)
    if baselines:
        if set(classifier.labels) == set(LABELS):
            result["vader"] = label_scores(vader_labels(texts), expected)
        result["tfidf_logreg"] = label_scores(tfidf_logistic_regression_labels(splits["train"], texts), expected)
    outputs = run / f"{split}.predictions.tsv"
    lines = (f"{e}\t{p}\t{t}\n" for e, p, t in zip(expected, predicted, texts, strict=True))
    outputs.write_text("label\tpredicted\ttext\n" + "".join(lines), encoding="utf-8")
    result["outputs"] = str(outputs)
    with open(run / "evaluation.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    return result
