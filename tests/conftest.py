import random

import pytest
import torch

from glassformer import GPT, GPTConfig, Tokenizer, Transformer, TransformerConfig


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


SUBJECTS = [("ich habe", "I have"), ("du hast", "you have"), ("wir haben", "we have")]
NUMBERS = [("zwei", "two"), ("drei", "three"), ("vier", "four"), ("fünf", "five"), ("sechs", "six")]
THINGS = [("rote Äpfel", "red apples"), ("große Häuser", "big houses"), ("alte Bücher", "old books")]


def _write_toy_corpus(path):
    """German → English toy sentences: 'ich habe drei rote Äpfel' → 'I have three red apples'."""
    lines = [f"{s} {n} {t}\t{es} {en} {et}\n" for s, es in SUBJECTS for n, en in NUMBERS for t, et in THINGS]
    path.write_text("".join(lines), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def write_toy_corpus():
    """A function writing a toy German → English TSV (45 pairs) to a path."""
    return _write_toy_corpus


# --- a tiny labelled file and a tiny BERT for the classification tests -------------------------------------

POSITIVE = ["good", "great", "lovely", "superb", "wonderful", "fine"]
NEGATIVE = ["bad", "awful", "boring", "dull", "terrible", "poor"]
FILLER = ["the", "film", "was", "a", "plot", "very", "and", "story", "acting", "quite"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_labelled_file(path, count=240, seed=0):
    rng = random.Random(seed)
    lines = []
    for i in range(count):
        label = "positive" if i % 2 else "negative"
        words = rng.sample(FILLER, 4) + [rng.choice(POSITIVE if i % 2 else NEGATIVE)]
        rng.shuffle(words)
        lines.append(f"{label}\t{' '.join(words)}\n")
    path.write_text("".join(lines), encoding="utf-8")
    return path


def write_tiny_bert(directory):
    """A random 2-layer BERT with a WordPiece vocabulary of the test's words (saved as vocab.txt)."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = SPECIALS + POSITIVE + NEGATIVE + FILLER
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    from glassformer.models.bert import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), max_seq_length=32, d_model=32, num_layers=2, num_heads=4, d_ff=64)
    BertForSequenceClassification(config).bert.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("classify")
    return write_labelled_file(folder / "reviews.tsv"), write_tiny_bert(folder / "tiny-bert")


@pytest.fixture(scope="session")
def tiny_classification(tmp_path_factory):
    """``(reviews.tsv, tiny-bert directory)``: 240 labelled toy reviews and a random 2-layer BERT whose
    WordPiece vocabulary holds their words."""
    folder = tmp_path_factory.mktemp("classify")
    return write_labelled_file(folder / "reviews.tsv"), write_tiny_bert(folder / "tiny-bert")


CHAR_TEXT = "the cat sat on the mat. the dog ate the bone. a bird sang in the tree.\n" * 20


@pytest.fixture(scope="session")
def char_tokenizer():
    """A character vocabulary of a few toy sentences."""
    return Tokenizer.train([CHAR_TEXT], kind="char")


@pytest.fixture(scope="session")
def gpt_dir(tmp_path_factory, char_tokenizer):
    """A random 2-layer GPT checkpoint with its character tokenizer."""
    directory = tmp_path_factory.mktemp("gpt")
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=char_tokenizer.vocab_size, max_seq_length=64, d_model=16, num_layers=2, num_heads=2, d_ff=32
    )
    GPT(config).save_pretrained(directory)
    char_tokenizer.save(directory)
    return directory


@pytest.fixture(scope="session")
def translation_dir(tmp_path_factory, char_tokenizer):
    """A random encoder-decoder with a joint character vocabulary, saved as a `train translate` run's best/."""
    directory = tmp_path_factory.mktemp("translation") / "best"
    torch.manual_seed(0)
    n = char_tokenizer.vocab_size
    config = TransformerConfig(
        src_vocab_size=n, tgt_vocab_size=n, d_model=16, num_layers=2, num_heads=2, d_ff=32, max_seq_length=64,
        pad_token_id=1, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    Transformer(config).save_pretrained(directory)
    char_tokenizer.save(directory)
    return directory.parent


@pytest.fixture
def fused_steps(monkeypatch):
    """A list that records, for every decoding step offered to the fused step (glassformer.generation.fused_step),
    whether it served it."""
    from glassformer.generation import fused_step

    served, real = [], fused_step.step

    def counted(*args):
        logits = real(*args)
        served.append(logits is not None)
        return logits

    monkeypatch.setattr(fused_step, "step", counted)
    return served


@pytest.fixture
def nan_caches(monkeypatch):
    """``with nan_caches() as made:`` every key/value cache made inside starts as NaN where its memory is not
    cleared (``KVCache``, the pools of ``BeamBlocks``), and is listed in ``made``: decoding that reads a position
    before writing it then gives NaN or other tokens."""
    import contextlib
    import inspect

    from glassformer.nn.cache import CacheStorage
    from glassformer.nn.slot_cache import SlotCache

    storage_init, slots_init = CacheStorage.__init__, SlotCache.__init__

    @contextlib.contextmanager
    def poisoned():
        made = []

        def storage(self, *args, **kwargs):
            storage_init(self, *args, **kwargs)
            self.keys.fill_(float("nan")), self.values.fill_(float("nan"))
            made.append(self)

        def slots(self, *args, **kwargs):
            slots_init(self, *args, **kwargs)
            if not inspect.signature(slots_init).bind(self, *args, **kwargs).arguments.get("zeroed", True):
                self.keys.fill_(float("nan")), self.values.fill_(float("nan"))
                made.append(self)

        with monkeypatch.context() as patch:
            patch.setattr(CacheStorage, "__init__", storage)
            patch.setattr(SlotCache, "__init__", slots)
            yield made

    return poisoned
