"""Parallel text for translation: reading pairs, a token-id ``Dataset``, and batches capped by tokens.

pairs      [(source sentence, target sentence), ...]  from a TSV (source<TAB>target) or two aligned files
dataset    source ids + [EOS];  target ids as [BOS] y_1 .. y_n [EOS]
batches    sentences of similar length together; batch size × longest length <= max_tokens;
           padded only to the batch's longest (right padding); a new order every epoch, from a seed
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset, Sampler

from glassformer.files import read_text

Pair = tuple[str, str]
IGNORE_INDEX = -100  # the label of padded target positions, skipped by the loss (F.cross_entropy's default)


def _read_lines(path: Path) -> list[str]:
    text = read_text(path, "sentence file")
    if not text.strip():
        raise ValueError(f"{path} is empty; give a file with one sentence (pair) per line")
    return text.splitlines()


def read_parallel(path: str | Path, target_path: str | Path | None = None) -> list[Pair]:
    """Sentence pairs from a TSV of ``source<TAB>target`` lines, or from two line-aligned text files.

    Blank lines of a TSV are skipped; a non-blank line without a tab, a side that is empty, or files of different
    line counts are errors that name the file and line.
    """
    path = Path(path)
    lines = _read_lines(path)
    if target_path is not None:
        target_path = Path(target_path)
        targets = _read_lines(target_path)
        if len(lines) != len(targets):
            raise ValueError(
                f"{path} has {len(lines)} lines but {target_path} has {len(targets)}; the files must be line-aligned"
            )
        rows = list(zip(lines, targets, strict=True))
    else:
        rows = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            if "\t" not in line:
                raise ValueError(f"line {number} of {path} has no tab; each line must be source<TAB>target")
            source, target = line.split("\t", 1)
            rows.append((source, target))
    pairs = []
    for number, (source, target) in enumerate(rows, 1):
        source, target = source.strip(), target.strip()
        if not source or not target:
            raise ValueError(f"pair {number} of {path} has an empty side; remove it or fill it in")
        pairs.append((source, target))
    if not pairs:
        raise ValueError(f"{path} holds no sentence pairs")
    return pairs


def split_pairs(pairs: Sequence[Pair], seed: int = 0, fractions: tuple[float, float] = (0.9, 0.05)) -> dict:
    """A seeded random train/valid/test split of the user's pairs (at least one pair in valid and in test)."""
    if len(pairs) < 3:
        raise ValueError(f"{len(pairs)} sentence pairs are too few to split into train/valid/test; give at least 3")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_valid = max(1, round(len(pairs) * fractions[1]))
    n_test = max(1, len(pairs) - round(len(pairs) * fractions[0]) - n_valid)
    n_train = len(pairs) - n_valid - n_test
    parts = {"train": order[:n_train], "valid": order[n_train : n_train + n_valid], "test": order[n_train + n_valid :]}
    return {name: [pairs[i] for i in sorted(index)] for name, index in parts.items()}


class ParallelDataset(Dataset):
    """Token ids of sentence pairs. ``dataset[i]`` is ``(source ids + [eos], [bos] + target ids + [eos])``.

    Pairs longer than ``max_length`` on either side are dropped (``dropped`` counts them) unless
    ``truncate``, which cuts them to fit.
    """

    def __init__(
        self,
        pairs: Sequence[Pair],
        source_tokenizer,
        target_tokenizer,
        bos_token_id: int,
        eos_token_id: int,
        max_length: int,
        truncate: bool = False,
    ):
        sources = source_tokenizer.encode([s for s, _ in pairs], add_special_tokens=False)
        targets = target_tokenizer.encode([t for _, t in pairs], add_special_tokens=False)
        self.examples: list[tuple[list[int], list[int]]] = []
        self.dropped = 0
        for src, tgt in zip(sources, targets, strict=True):
            src, tgt = src + [eos_token_id], [bos_token_id] + tgt + [eos_token_id]
            if len(src) > max_length or len(tgt) > max_length:
                if not truncate:
                    self.dropped += 1
                    continue
                if len(src) > max_length:
                    src = src[: max_length - 1] + [eos_token_id]
                if len(tgt) > max_length:
                    tgt = tgt[: max_length - 1] + [eos_token_id]
            self.examples.append((src, tgt))

    @classmethod
    def from_examples(cls, examples: Sequence[tuple[list[int], list[int]]]) -> ParallelDataset:
        """A dataset of ready-made ``(source ids, target ids)`` examples (e.g. a synthetic task)."""
        dataset = cls.__new__(cls)
        dataset.examples, dataset.dropped = list(examples), 0
        return dataset

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> tuple[list[int], list[int]]:
        return self.examples[index]

    def lengths(self) -> list[int]:
        """Per example, the longer side's length: what it costs in a padded batch."""
        return [max(len(s), len(t) - 1) for s, t in self.examples]


@dataclasses.dataclass
class Seq2SeqBatch:
    """``src`` ``(batch, src_len)`` padded with pad_token_id; ``tgt_in`` ``(batch, tgt_len)`` = [BOS] y_1 .. y_n padded
    with pad_token_id; ``tgt_out`` = y_1 .. y_n [EOS], padded with ``IGNORE_INDEX``; ``tokens``: real target tokens."""

    src: torch.Tensor
    tgt_in: torch.Tensor
    tgt_out: torch.Tensor
    tokens: int


def collate(examples: Sequence[tuple[list[int], list[int]]], pad_token_id: int) -> Seq2SeqBatch:
    """Right-pad a list of examples to the batch's longest source and target."""
    src_len = max(len(s) for s, _ in examples)
    tgt_len = max(len(t) for _, t in examples) - 1
    src = torch.full((len(examples), src_len), pad_token_id, dtype=torch.long)
    tgt_in = torch.full((len(examples), tgt_len), pad_token_id, dtype=torch.long)
    tgt_out = torch.full((len(examples), tgt_len), IGNORE_INDEX, dtype=torch.long)
    for row, (s, t) in enumerate(examples):
        src[row, : len(s)] = torch.tensor(s)
        tgt_in[row, : len(t) - 1] = torch.tensor(t[:-1])
        tgt_out[row, : len(t) - 1] = torch.tensor(t[1:])
    return Seq2SeqBatch(src, tgt_in, tgt_out, sum(len(t) - 1 for _, t in examples))


def token_batches(lengths: Sequence[int], order: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Cut ``order`` (indices, sorted by length within buckets) into batches with
    ``len(batch) · max(length in batch) <= max_tokens``."""
    batches, batch, longest = [], [], 0
    for index in order:
        length = lengths[index]
        if batch and (len(batch) + 1) * max(longest, length) > max_tokens:
            batches.append(batch)
            batch, longest = [], 0
        batch.append(index)
        longest = max(longest, length)
    if batch:
        batches.append(batch)
    return batches


class TokenBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices of similar length, each costing at most ``max_tokens`` padded positions.

    Each epoch: shuffle all indices (seeded by ``seed`` and the epoch number), sort them by length within
    buckets of ``bucket_size`` (similar lengths together, still random across buckets), cut into token-capped
    batches, shuffle the batches. Every example appears exactly once per epoch. ``next_batch()`` walks through
    the epochs forever; ``state_dict()`` / ``load_state_dict()`` save and restore the position for resuming.
    Iterating the sampler (as a ``DataLoader``'s ``batch_sampler``) gives one epoch from the current position.
    """

    def __init__(
        self, lengths: Sequence[int], max_tokens: int, seed: int = 0, shuffle: bool = True, bucket_size: int = 4096
    ):
        if not lengths:
            raise ValueError("the dataset is empty; nothing to batch")
        if max(lengths) > max_tokens:
            raise ValueError(
                f"an example of {max(lengths)} tokens does not fit a batch of max_tokens={max_tokens}; "
                "raise max_tokens or lower the maximum length"
            )
        self.lengths = list(lengths)
        self.max_tokens = max_tokens
        self.seed = seed
        self.shuffle = shuffle
        self.bucket_size = bucket_size
        self.epoch = 0
        self.position = 0
        self._batches = self._epoch_batches(0)

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        indices = list(range(len(self.lengths)))
        if not self.shuffle:
            return token_batches(self.lengths, sorted(indices, key=self.lengths.__getitem__), self.max_tokens)
        rng = random.Random(self.seed * 1_000_003 + epoch)
        rng.shuffle(indices)
        order = []
        for start in range(0, len(indices), self.bucket_size):
            order.extend(sorted(indices[start : start + self.bucket_size], key=self.lengths.__getitem__))
        batches = token_batches(self.lengths, order, self.max_tokens)
        rng.shuffle(batches)
        return batches

    def __len__(self) -> int:
        return len(self._batches)

    def __iter__(self) -> Iterator[list[int]]:
        while self.position < len(self._batches):
            yield self.next_batch()
            if self.position == 0:  # next_batch rolled over into a new epoch
                return

    def next_batch(self) -> list[int]:
        batch = self._batches[self.position]
        self.position += 1
        if self.position == len(self._batches):
            self.epoch, self.position = self.epoch + 1, 0
            self._batches = self._epoch_batches(self.epoch)
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.epoch, self.position = state["seed"], state["epoch"], state["position"]
        self._batches = self._epoch_batches(self.epoch)
