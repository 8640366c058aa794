"""Training the encoder-decoder Transformer to translate, with the shared training loop.

    data        pairs from the Bible corpus (German → English by default) or the user's TSV / two text files
    tokenizer   byte-level BPE trained on the training split: one joint vocabulary (default) or one per side;
                special tokens <pad>=0, <s>=1, </s>=2, <unk>=3, recorded in the model's config
    batches     length-bucketed, capped at ``max_tokens`` padded positions (``glassformer.data.parallel``)
    loss        label-smoothed cross-entropy over the real target tokens (ε = 0.1)
    optimizer   Adam(β = (0.9, 0.98), ε = 1e-9) with the paper's warm-up schedule, or AdamW + cosine

A run directory holds ``translation.json`` (where the data came from), ``metrics.jsonl`` and the ``best/`` and
``last/`` checkpoints: model (config.json + model.safetensors), tokenizer(s) and the trainer's state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from glassformer.data.parallel import ParallelDataset, Seq2SeqBatch, TokenBatchSampler, collate
from glassformer.files import read_json
from glassformer.models.transformer import Transformer, TransformerConfig
from glassformer.options import check_options
from glassformer.pipelines.translator import SOURCE_TOKENIZER_FILE, load_tokenizers
from glassformer.tokenizer import Tokenizer
from glassformer.training import distributed, recipes
from glassformer.training.loop import TrainConfig, Trainer
from glassformer.training.losses import fused_label_smoothed_cross_entropy
from glassformer.training.train import train as run_training

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0, 1, 2, 3
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)
RUN_FILE = "translation.json"

# model shapes for `train translate --preset`; all pre-norm with shared, tied embeddings. `compact` is for runs that
# see the data only once or twice (a slow machine, a short time): no dropout, whose mask costs a good part of a CPU
# step and which regularizes what is not yet overfitting (README: the main job's measurements)
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(d_model=64, num_layers=2, num_heads=4, d_ff=256, dropout=0.1),
    "compact": dict(d_model=256, num_layers=2, num_heads=4, d_ff=512, dropout=0.0),
    "small": dict(d_model=256, num_layers=3, num_heads=4, d_ff=1024, dropout=0.1),
    "medium": dict(d_model=384, num_layers=4, num_heads=6, d_ff=1536, dropout=0.1),
    "base": dict(d_model=512, num_layers=6, num_heads=8, d_ff=2048, dropout=0.1),
}


# the model's other choices, one field set of TransformerConfig each (README: BLEU after equal time for each)
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "paper": {},  # LayerNorm, sinusoidal positions added to sqrt(d)-scaled embeddings, ReLU, biases
    "t5": dict(  # relative position bias, RMSNorm, unscaled logits, gated GELU, no biases, scaled tied output
        norm="rmsnorm",
        positional="relative",
        attention_scale=1.0,
        bias=False,
        activation="gelu_tanh",
        gated_ffn=True,
        layer_norm_eps=1e-6,
        scale_embeddings=False,
        scale_output=True,
    ),  # fmt: skip
    "llama": dict(norm="rmsnorm", positional="rope", activation="silu", gated_ffn=True, bias=False),
}
DEFAULT_MAX_TOKENS = 4096  # padded tokens per batch
DEFAULT_MAX_LENGTH = 256  # tokens per sentence, longer training pairs are left out
DEFAULT_VOCAB_SIZE = 8000
# `--preset auto`: these (preset, tokens per batch), cheapest first, are timed on the machine at hand, and the last
# one whose measured step time still gives AUTO_MIN_STEPS optimizer steps within --max-minutes is trained. Fewer
# steps than that leave a run in or near the learning-rate warm-up (README: what each machine picked and reached).
AUTO_SHAPES = (("compact", 2048), ("small", DEFAULT_MAX_TOKENS), ("medium", DEFAULT_MAX_TOKENS), ("base", 8192))
AUTO_MIN_STEPS = 600
AUTO_WITHOUT_TIME_LIMIT = "small"


@dataclasses.dataclass
class DataSpec:
    """Where a run's sentence pairs come from: ``data`` is "bible" (``source``/``target`` translation codes) or
    a TSV path, or two aligned text files ``src_path,tgt_path``."""

    data: str = "bible"
    source: str = "e"
    target: str = "4"
    split_seed: int = 0

    def load(self) -> dict[str, list[tuple[str, str]]]:
        """``{"train": pairs, "valid": pairs, "test": pairs}``."""
        from glassformer.data.parallel import read_parallel, split_pairs

        if self.data == "bible":
            from glassformer.data.bible import prepare_bible

            paths = prepare_bible(self.source, self.target)
            return {split: read_parallel(path) for split, path in paths.items()}
        if "," in self.data:
            source_path, target_path = self.data.split(",", 1)
            return split_pairs(read_parallel(source_path, target_path), self.split_seed)
        if not Path(self.data).exists():
            raise ValueError(
                f"unknown corpus {self.data!r} and no such file; use 'bible', a TSV file or two files 'src,tgt'"
            )
        return split_pairs(read_parallel(self.data), self.split_seed)


class TranslationTask:
    """Batches of ``Seq2SeqBatch`` for the training loop; loss = label-smoothed cross-entropy when training,
    plain cross-entropy (ε = 0) for validation. Each batch of at most ``max_tokens`` padded tokens is the global
    batch: with several processes each trains on its ``shard`` of the batch's sentences."""

    shard = distributed.Shard()  # this process's part of each batch (the Trainer sets it)

    def __init__(
        self,
        model: Transformer,
        tokenizers: tuple[Tokenizer, Tokenizer] | tuple[None, None],
        train: ParallelDataset,
        valid: ParallelDataset,
        max_tokens: int,
        label_smoothing: float = 0.1,
        seed: int = 0,
    ):
        self.model = model
        self.source_tokenizer, self.target_tokenizer = tokenizers
        self.train_data, self.valid_data = train, valid
        self.sampler = TokenBatchSampler(train.lengths(), max_tokens, seed=seed)
        self.valid_sampler = TokenBatchSampler(valid.lengths(), max_tokens, shuffle=False)
        self.label_smoothing = label_smoothing
        self.pad_token_id = model.config.pad_token_id

    def mean_batch_tokens(self) -> float:
        """Target tokens in an average training batch (one epoch's worth over its number of batches)."""
        return sum(len(t) - 1 for _, t in self.train_data.examples) / len(self.sampler)

    def train_batch(self, generator: torch.Generator) -> Seq2SeqBatch:
        batch = self.shard.take(self.sampler.next_batch())  # sorted by length: every rank gets a similar share
        return collate([self.train_data[i] for i in batch], self.pad_token_id)

    def valid_batches(self):
        for batch in self.valid_sampler._epoch_batches(0):
            yield collate([self.valid_data[i] for i in batch], self.pad_token_id)

    def loss(self, batch: Seq2SeqBatch) -> tuple[torch.Tensor, int]:
        logits = self.model(batch.src, batch.tgt_in)  # (batch, tgt_len, vocab)
        epsilon = self.label_smoothing if self.model.training else 0.0
        return fused_label_smoothed_cross_entropy(logits.flatten(0, 1), batch.tgt_out.flatten(), epsilon)

    def save(self, directory: Path, weights: dict[str, torch.Tensor] | None = None) -> None:
        self.model.save_pretrained(directory, state_dict=weights)
        if self.target_tokenizer is None:  # a synthetic task of token ids
            return
        self.target_tokenizer.save(directory)
        if self.source_tokenizer is not self.target_tokenizer:
            self.source_tokenizer.save(directory, SOURCE_TOKENIZER_FILE)

    def state_dict(self) -> dict[str, int]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.load_state_dict(state)


def train_tokenizers(pairs: list[tuple[str, str]], vocab_size: int, shared: bool) -> tuple[Tokenizer, Tokenizer]:
    """Byte-level BPE on the training pairs: one joint vocabulary of ``vocab_size`` or one per side."""
    if shared:
        joint = Tokenizer.train(
            (text for pair in pairs for text in pair), vocab_size, "byte_bpe", special_tokens=SPECIAL_TOKENS
        )
        return joint, joint
    source = Tokenizer.train((s for s, _ in pairs), vocab_size, "byte_bpe", special_tokens=SPECIAL_TOKENS)
    target = Tokenizer.train((t for _, t in pairs), vocab_size, "byte_bpe", special_tokens=SPECIAL_TOKENS)
    return source, target


def translation_train_config(recipe: str = "paper", **overrides) -> TrainConfig:
    """How translation trains unless told otherwise: the paper's Adam(β = (0.9, 0.98), ε = 1e-9) and warm-up
    schedule (noam, peaking at 1.5e-3 after 300 steps), no weight decay, gradients clipped at 1.0; ``recipe``
    "fast" changes what ``glassformer.training.recipes`` says (Muon, the warm-down schedule, its peak lr)."""
    defaults = dict(
        max_steps=100_000, lr=1.5e-3, schedule="noam", warmup_steps=300, optimizer="adam", betas=(0.9, 0.98),
        eps=1e-9, weight_decay=0.0, grad_clip=1.0, eval_every=500, log_every=50,
    )  # fmt: skip
    return TrainConfig(**{**defaults, **recipes.recipe(recipe, "translate").train, **overrides})


def translation_config(
    preset: str,
    source_tokenizer: Tokenizer,
    target_tokenizer: Tokenizer,
    max_length: int,
    model_fields: dict[str, Any] | None = None,
    architecture: str = "paper",
) -> TransformerConfig:
    """The model of a translation run: the preset's shape and the architecture's choices (``ARCHITECTURES``),
    overridden by ``model_fields``; pre-norm, the special-token ids, embeddings shared when both sides use one
    tokenizer, output tied to the target embedding."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of auto, {', '.join(PRESETS)}")
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
    return TransformerConfig(
        src_vocab_size=source_tokenizer.vocab_size,
        tgt_vocab_size=target_tokenizer.vocab_size,
        max_seq_length=max_length,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        unk_token_id=UNK_ID,
        norm_first=True,
        share_embeddings=source_tokenizer is target_tokenizer,
        tie_output=True,
        **{**PRESETS[preset], **ARCHITECTURES[architecture], **(model_fields or {})},
    )


def choose_shape(make_task: Callable[[str, int], TranslationTask], train: TrainConfig) -> tuple[str, int, str]:
    """``--preset auto``: ``(preset, max_tokens, why)``, the largest of ``AUTO_SHAPES`` that makes at least
    ``AUTO_MIN_STEPS`` steps in ``train.max_minutes`` at the step time measured here (4 real steps of each
    candidate, cheapest first, on the device and precision the run will use). Without a time limit: ``small``."""
    if train.max_minutes is None:
        return AUTO_WITHOUT_TIME_LIMIT, DEFAULT_MAX_TOKENS, "preset auto without --max-minutes: the default, small"
    timing = dataclasses.replace(train, progress=False, grad_accum=1)
    chosen, notes = None, []
    for preset, max_tokens in AUTO_SHAPES:
        task = make_task(preset, max_tokens)
        trainer = Trainer(task, timing, run_dir=".")
        # steps = time · (tokens / s) / (tokens per batch): the rate varies less from batch to batch than a step
        steps = 60 * train.max_minutes * trainer.measure_steps(3)[1] / task.mean_batch_tokens()
        notes.append(f"{preset} with {max_tokens}-token batches {steps:,.0f} steps")
        if steps < AUTO_MIN_STEPS and chosen is not None:
            break
        chosen = (preset, max_tokens)
        if steps < AUTO_MIN_STEPS:  # even the cheapest is slow here: it is still the best choice
            break
    preset, max_tokens = chosen
    why = (
        f"preset auto on {trainer.placement.describe()}: measured {'; '.join(notes)} in {train.max_minutes:g} "
        f"minutes -> {preset} with {max_tokens}-token batches (the largest that makes {AUTO_MIN_STEPS}+ steps)"
    )
    return preset, max_tokens, why


@dataclasses.dataclass
class TranslationRun:
    """A translation run (``glassformer.training.train``'s spec): the encoder-decoder Transformer of ``preset``
    (``PRESETS``, or ``auto``: ``AUTO_SHAPES`` timed on this machine, the one that fits ``max_minutes``, reported
    through ``report``) and ``architecture`` (``ARCHITECTURES``) on ``data``, with BPE tokenizers trained on it;
    batches of ``max_tokens`` padded tokens (4096, or the auto choice's), label smoothing ε. ``recipe`` ("paper" or
    "fast", ``glassformer.training.recipes``) adds its model fields under ``model_fields``; its training fields are
    the ``TrainConfig``'s (``translation_train_config(recipe)``, the default when none is given)."""

    data: DataSpec | None = None
    preset: str = "small"
    model_fields: dict[str, Any] | None = None
    vocab_size: int = DEFAULT_VOCAB_SIZE
    shared_vocab: bool = True
    max_length: int = DEFAULT_MAX_LENGTH
    max_tokens: int | None = None
    label_smoothing: float = 0.1
    architecture: str = "paper"
    report: Callable[[str], None] | None = None
    recipe: str = "paper"
    kind, run_file = "translation", RUN_FILE

    def __post_init__(self) -> None:  # before any work: one line naming the bad option
        check_options(vocab_size=self.vocab_size, max_length=self.max_length, max_tokens=self.max_tokens,
                      label_smoothing=self.label_smoothing)  # fmt: skip
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
        if self.preset not in PRESETS and self.preset != "auto":
            raise ValueError(f"unknown preset {self.preset!r}; choose one of auto, {', '.join(PRESETS)}")
        self.data, self.auto_choice = self.data or DataSpec(), None
        self.model_fields = {**recipes.recipe(self.recipe, "translate").model, **(self.model_fields or {})}

    def default_config(self) -> TrainConfig:
        return translation_train_config(self.recipe)

    def data_path(self) -> str | None:
        return self.data.data

    def restore(self, record: dict[str, Any]) -> None:  # the data and batching of the run being resumed
        recipes.check_resumed(record.get("recipe", "paper"), self.recipe)
        self.data, self.max_tokens, self.preset = DataSpec(**record["data"]), record["max_tokens"], record["preset"]
        self.label_smoothing = record.get("label_smoothing", self.label_smoothing)

    def build(self, out: Path, resume: bool, world, config: TrainConfig) -> tuple[TranslationTask, TrainConfig]:
        splits = self.data.load()
        if resume:
            tokenizers = load_tokenizers(out / "last")
            self.max_length = read_json(out / "last" / "config.json", "checkpoint config")["max_seq_length"]
        else:
            tokenizers = world.from_main(lambda: train_tokenizers(splits["train"], self.vocab_size, self.shared_vocab))
        self.datasets = {
            split: ParallelDataset(splits[split], *tokenizers, BOS_ID, EOS_ID, self.max_length, split != "train")
            for split in ("train", "valid")
        }
        if len(self.datasets["train"]) == 0:
            raise ValueError(f"no training pair fits max_length={self.max_length}; raise --max-length")

        def make_task(preset: str, max_tokens: int, model: Transformer | None = None) -> TranslationTask:
            fields = (preset, *tokenizers, self.max_length, self.model_fields, self.architecture)
            model = model or Transformer(translation_config(*fields))
            train, valid = self.datasets["train"], self.datasets["valid"]
            return TranslationTask(model, tokenizers, train, valid, max_tokens, self.label_smoothing, config.seed)

        if resume:
            return make_task(self.preset, self.max_tokens, Transformer.from_pretrained(out / "last")), config
        if self.preset == "auto":
            if world.distributed and config.max_minutes is not None:
                raise ValueError(
                    "--preset auto times this machine in one process; with several processes name a preset "
                    f"({', '.join(PRESETS)})"
                )
            self.preset, auto_max_tokens, self.auto_choice = choose_shape(make_task, config)
            self.max_tokens = self.max_tokens or auto_max_tokens
            if self.report is not None and world.is_main:
                self.report(self.auto_choice)
        self.max_tokens = self.max_tokens or DEFAULT_MAX_TOKENS
        torch.manual_seed(config.seed)  # the initial weights depend on the seed only
        return make_task(self.preset, self.max_tokens), config

    def record(self, task: TranslationTask) -> dict[str, Any]:
        record = {"data": dataclasses.asdict(self.data), "preset": self.preset, "architecture": self.architecture,
                  "max_tokens": self.max_tokens, "label_smoothing": self.label_smoothing,
                  "recipe": self.recipe}  # fmt: skip
        return record if self.auto_choice is None else {**record, "auto_preset": self.auto_choice}

    def summary(self, task: TranslationTask) -> dict[str, Any]:
        train, sampler = self.datasets["train"], task.sampler
        return {
            "preset": self.preset, "max_tokens": self.max_tokens, "train_pairs": len(train),
            "dropped_pairs": train.dropped, "epochs": sampler.epoch + sampler.position / max(len(sampler), 1),
            "parameters": sum(p.numel() for p in task.model.parameters()),
        }  # fmt: skip


def train_translation(
    out: str | Path,
    data: DataSpec | None = None,
    preset: str = "small",
    model_fields: dict[str, Any] | None = None,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    shared_vocab: bool = True,
    max_length: int = DEFAULT_MAX_LENGTH,
    max_tokens: int | None = None,
    label_smoothing: float = 0.1,
    train: TrainConfig | None = None,
    resume: bool = False,
    report: Callable[[str], None] | None = None,
    architecture: str = "paper",
    recipe: str = "paper",
) -> dict[str, Any]:
    """Train a translation model into ``out`` (the options are ``TranslationRun``'s); returns the final step,
    validation loss and model size. ``train`` defaults to ``translation_train_config(recipe)``."""
    spec = TranslationRun(data, preset, model_fields, vocab_size, shared_vocab, max_length, max_tokens,
                          label_smoothing, architecture, report, recipe)  # fmt: skip
    return run_training(spec, train, out, resume)
