import pytest
import torch


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
