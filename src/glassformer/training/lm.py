"""Language-model training: next-token prediction on a text corpus, with the shared training loop.

batch: x = ids[s : s + block], y = ids[s + 1 : s + block + 1] for random starts s
loss:  cross-entropy(GPT(x), y), mean over tokens;  perplexity = exp(loss)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F

from glassformer.files import read_text
from glassformer.models.gpt import GPT, GPTConfig
from glassformer.options import check_options
from glassformer.tokenizer import GPT2_END_OF_TEXT, Tokenizer
from glassformer.training import distributed, recipes
from glassformer.training.loop import TrainConfig
from glassformer.training.train import train as run_training

RUN_FILE = "language_model.json"  # where the data came from (path and sha256) and the batch size
PRESETS = {  # GPT shapes for `train lm --preset`
    "tiny": dict(d_model=64, num_layers=2, num_heads=4, d_ff=256, max_seq_length=64),
    "small": dict(d_model=128, num_layers=4, num_heads=4, d_ff=512, max_seq_length=128),
    "shakespeare_char": dict(d_model=384, num_layers=6, num_heads=6, d_ff=1536, max_seq_length=256),
}


def lm_train_config(recipe: str = "paper", **overrides) -> TrainConfig:
    """How a language model trains unless told otherwise: AdamW, warm-up then cosine to 1e-3 · 0.1, 2,000 steps
    (nanoGPT's recipe); ``recipe`` "fast" changes what ``glassformer.training.recipes`` says."""
    return TrainConfig(**{"max_steps": 2000, **recipes.recipe(recipe, "lm").train, **overrides})


class LanguageModelingTask:
    """Random windows of ``block_size + 1`` tokens for training; fixed, non-overlapping windows for validation.
    ``batch_size`` windows per step in all, of which each process trains on its ``shard``."""

    shard = distributed.Shard()  # this process's part of each batch (the Trainer sets it)

    def __init__(
        self,
        model: GPT,
        tokenizer: Tokenizer,
        train_ids: torch.Tensor,
        valid_ids: torch.Tensor,
        batch_size: int,
        eval_batches: int = 20,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.block = model.config.max_seq_length
        for name, ids in (("training", train_ids), ("validation", valid_ids)):
            if ids.numel() <= self.block + 1:
                raise ValueError(
                    f"the {name} text has {ids.numel()} tokens, not more than block size {self.block} + 1; "
                    "give more text or a smaller --block-size"
                )
        self.train_ids, self.valid_ids = train_ids, valid_ids
        self.batch_size = batch_size
        self.eval_batches = eval_batches

    def _windows(self, ids: torch.Tensor, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        offsets = torch.arange(self.block + 1)
        window = ids[starts[:, None] + offsets]  # (batch, block + 1)
        return window[:, :-1], window[:, 1:]

    def train_batch(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(self.train_ids.numel() - self.block - 1, (self.batch_size,), generator=generator)
        return self._windows(self.train_ids, self.shard.take(starts))

    def valid_batches(self):
        starts = torch.arange(0, self.valid_ids.numel() - self.block - 1, self.block)
        for i in range(0, min(len(starts), self.batch_size * self.eval_batches), self.batch_size):
            yield self._windows(self.valid_ids, starts[i : i + self.batch_size])

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
        x, y = batch
        logits = self.model(x)
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten()), y.numel()

    def save(self, directory: Path, weights: dict[str, torch.Tensor] | None = None) -> None:
        self.model.save_pretrained(directory, state_dict=weights)
        self.tokenizer.save(directory)


def read_corpus(path: str | Path | None) -> tuple[str, str]:
    """``(train_text, valid_text)``: the bundled Shakespeare plays (whole plays held out) when ``path`` is None,
    else the file's text with its last tenth (cut at a line break) held out."""
    if path is None:
        from glassformer.data.shakespeare import prepare_shakespeare

        splits = prepare_shakespeare()
        return splits["train"].read_text(encoding="utf-8"), splits["valid"].read_text(encoding="utf-8")
    path = Path(path)
    text = read_text(path)
    if not text.strip():
        raise ValueError(f"{path} is empty; give a text file to train on")
    cut = text.rfind("\n", 0, int(len(text) * 0.9)) + 1 or int(len(text) * 0.9)
    return text[:cut], text[cut:]


@dataclasses.dataclass
class LanguageModelRun:
    """A language-model run (``glassformer.training.train``'s spec): a GPT (``architecture`` "gpt2": learned
    positions, LayerNorm, GELU; "llama": ``GPTConfig.llama``, rotary, RMSNorm, SwiGLU) on a corpus (the bundled
    Shakespeare when ``data`` is None), with a tokenizer trained on it; ``recipe`` ("paper" or "fast",
    ``glassformer.training.recipes``) adds its model fields under ``model_fields``."""

    data: str | Path | None = None
    tokenizer_kind: str = "char"
    vocab_size: int = 2000
    model_fields: dict | None = None
    batch_size: int = 16
    architecture: str = "gpt2"
    recipe: str = "paper"
    kind, run_file = "language model", RUN_FILE

    def __post_init__(self) -> None:  # before any work: one line naming the bad option
        if self.architecture not in ("gpt2", "llama"):
            raise ValueError(f"unknown architecture {self.architecture!r}; choose 'gpt2' or 'llama'")
        check_options(vocab_size=self.vocab_size, batch_size=self.batch_size)
        self.model_fields = {**recipes.recipe(self.recipe, "lm").model, **(self.model_fields or {})}

    def default_config(self) -> TrainConfig:
        return lm_train_config(self.recipe)

    def data_path(self) -> str | None:
        return None if self.data is None else str(Path(self.data).resolve())

    def restore(self, record: dict) -> None:
        if self.data is not None and record["data"] != self.data_path():
            raise ValueError(f"this run was trained on {record['data']}; resume it without --data")
        recipes.check_resumed(record.get("recipe", "paper"), self.recipe)
        self.data, self.batch_size = record["data"], record.get("batch_size", self.batch_size)

    def build(self, out: Path, resume: bool, world, config: TrainConfig) -> tuple[LanguageModelingTask, TrainConfig]:
        distributed.check_divisible("batch_size", self.batch_size, world)
        train_text, valid_text = read_corpus(self.data)
        if resume:  # the trainer restores optimizer, RNG and step beside the weights
            tokenizer, model = Tokenizer.from_pretrained(out / "last"), GPT.from_pretrained(out / "last")
        else:
            tokenizer = world.from_main(
                lambda: Tokenizer.train([train_text], vocab_size=self.vocab_size, kind=self.tokenizer_kind)
            )
            eos = tokenizer.token_to_id(GPT2_END_OF_TEXT)
            fields = {**PRESETS["small"], **(self.model_fields or {})}
            make_config = GPTConfig.llama if self.architecture == "llama" else GPTConfig
            model_config = make_config(
                vocab_size=tokenizer.vocab_size, bos_token_id=eos, eos_token_id=eos, pad_token_id=None, **fields
            )
            torch.manual_seed(config.seed)  # the initial weights depend on the seed only
            model = GPT(model_config)
        ids = [torch.tensor(tokenizer.encode(text), dtype=torch.long) for text in (train_text, valid_text)]
        return LanguageModelingTask(model, tokenizer, *ids, self.batch_size), config

    def record(self, task: LanguageModelingTask) -> dict:
        return {"data": self.data_path(), "batch_size": self.batch_size, "recipe": self.recipe}

    def summary(self, task: LanguageModelingTask) -> dict:
        model = task.model
        return {"parameters": sum(p.numel() for p in model.parameters()), "config": dataclasses.asdict(model.config)}


def train_language_model(
    out: str | Path,
    data: str | Path | None = None,
    tokenizer_kind: str = "char",
    vocab_size: int = 2000,
    model_fields: dict | None = None,
    batch_size: int = 16,
    train: TrainConfig | None = None,
    resume: bool = False,
    architecture: str = "gpt2",
    recipe: str = "paper",
) -> dict:
    """Train a GPT on a corpus into ``out`` (``out/best`` and ``out/last`` hold model + tokenizer; the options are
    ``LanguageModelRun``'s); returns the final validation loss and perplexity, the model's size and config.
    ``train`` defaults to ``lm_train_config(recipe)``."""
    spec = LanguageModelRun(data, tokenizer_kind, vocab_size, model_fields, batch_size, architecture, recipe)
    return run_training(spec, train, out, resume)
