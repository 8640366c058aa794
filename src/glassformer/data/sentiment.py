"""Human-rated sentences for sentiment classification, from the VADER paper (Hutto & Gilbert, ICWSM 2014).

The ``vaderSentiment==3.3.2`` source distribution (MIT) ships ``additional_resources/hutto_ICWSM_2014.tar.gz``:
per domain a file of ``id<TAB>mean rating (-4..4)<TAB>sentence``, each rating the mean of 20 people's. The binary
label is the sign of the rating (ratings of exactly 0 are dropped); the sentences are shuffled with a fixed seed
and cut 80/10/10 into train / valid / test.

Prepared splits are TSV files of ``label<TAB>text`` — the same format a user's own labelled data may have.
"""

from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path

from glassformer.data.cache import cache_dir, fetch_sdist, prepared
from glassformer.files import read_text

VADER_SDIST = ("vaderSentiment", "3.3.2", "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9")
ARCHIVE = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
DOMAINS = {
    "movies": "movieReviewSnippets_GroundTruth.txt",
    "amazon": "amazonReviewSnippets_GroundTruth.txt",
    "tweets": "tweets_GroundTruth.txt",
    "nyt": "nytEditorialSnippets_GroundTruth.txt",
}
LABELS = ("negative", "positive")
SPLITS = (("train", 0.8), ("valid", 0.1), ("test", 0.1))


def parse_ratings(text: str) -> list[tuple[str, str]]:
    """``id<TAB>rating<TAB>sentence`` lines → ``(label, sentence)``; label = sign of the rating, 0 dropped."""
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        if len(parts) != 3:
            raise ValueError(f"line {number} is not id<TAB>rating<TAB>text: {line[:60]!r}")
        rating, sentence = float(parts[1]), parts[2].strip()
        if rating != 0 and sentence:
            rows.append((LABELS[rating > 0], sentence))
    return rows


def split_rows(rows: list, seed: int = 0) -> dict[str, list]:
    """Shuffle with ``seed`` and cut 80/10/10."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    out, start = {}, 0
    for i, (split, share) in enumerate(SPLITS):
        end = len(rows) if i == len(SPLITS) - 1 else start + round(share * len(rows))
        out[split] = rows[start:end]
        start = end
    return out


def write_tsv(path: Path, rows: list[tuple[str, str]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{label}\t{text}\n" for label, text in rows), encoding="utf-8")
    tmp.replace(path)


def read_tsv(path: str | Path) -> list[tuple[str, str]]:
    """A labelled file, one ``label<TAB>text`` per line → ``(label, text)`` pairs."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no labelled file at {path}; give a TSV of label<TAB>text lines")
    rows = []
    for number, line in enumerate(read_text(path, "labelled file").splitlines(), 1):
        if not line.strip():
            continue
        label, sep, text = line.partition("\t")
        if not sep or not label.strip() or not text.strip():
            raise ValueError(f"{path}:{number} is not label<TAB>text: {line[:60]!r}")
        rows.append((label.strip(), text.strip()))
    if not rows:
        raise ValueError(f"{path} holds no labelled lines")
    return rows


def prepare_sentiment(domain: str = "movies", seed: int = 0, cache: Path | None = None) -> dict[str, Path]:
    """Fetch (once) and split one domain: ``{"train": path, "valid": path, "test": path}`` of TSV files."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown sentiment domain {domain!r}; choose one of {', '.join(DOMAINS)}")
    cache = cache or cache_dir()

    def build(folder: Path) -> None:
        sdist = fetch_sdist(*VADER_SDIST, cache=cache)  # only read as an archive: never built or run
        with tarfile.open(sdist) as outer:
            inner_bytes = outer.extractfile(ARCHIVE).read()
        with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
            member = next(m for m in inner.getmembers() if m.name.endswith("/" + DOMAINS[domain]))
            text = inner.extractfile(member).read().decode("utf-8")
        for split, rows in split_rows(parse_ratings(text), seed).items():
            write_tsv(folder / f"{split}.tsv", rows)

    folder = prepared(cache / "sentiment" / (domain if seed == 0 else f"{domain}-seed{seed}"), build)
    return {split: folder / f"{split}.tsv" for split, _ in SPLITS}
