"""The sentiment data: the VADER paper's rating files, parsed and split; a stand-in sdist in the cache replaces
pip's download (and the real one is checked where the registry is reachable)."""

import hashlib
import io
import tarfile

import pytest

from glassformer.data import sentiment
from glassformer.data.sentiment import parse_ratings, prepare_sentiment, read_tsv, split_rows

RATINGS = "1\t2.26\tA gorgeous, witty film.\r\n2\t-1.5\tDull and tepid.\r\n3\t0.0\tIt is a film.\r\n"


def test_label_is_the_sign_of_the_rating_and_zero_is_dropped():
    assert parse_ratings(RATINGS) == [("positive", "A gorgeous, witty film."), ("negative", "Dull and tepid.")]
    with pytest.raises(ValueError, match="line 1"):
        parse_ratings("not a rating line")


def test_split_is_80_10_10_and_fixed_by_the_seed():
    rows = [("positive", str(i)) for i in range(100)]
    splits = split_rows(rows, seed=0)
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [80, 10, 10]
    assert sorted(sum(splits.values(), []), key=lambda r: int(r[1])) == rows
    assert split_rows(rows, seed=0) == splits and split_rows(rows, seed=1) != splits


def make_sdist(folder, text):
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as archive:
        data = text.encode()
        info = tarfile.TarInfo("hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "vaderSentiment-3.3.2.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        info = tarfile.TarInfo(sentiment.ARCHIVE)
        info.size = len(inner.getvalue())
        archive.addfile(info, io.BytesIO(inner.getvalue()))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_prepare_sentiment_from_the_cached_sdist(tmp_path, monkeypatch):
    lines = "".join(f"{i}\t{(-1) ** i * 1.5}\tsentence {i}\r\n" for i in range(1, 41))
    digest = make_sdist(tmp_path / "downloads", lines)
    monkeypatch.setattr(sentiment, "VADER_SDIST", ("vaderSentiment", "3.3.2", digest))
    paths = prepare_sentiment("movies", cache=tmp_path)
    rows = {split: read_tsv(path) for split, path in paths.items()}
    assert [len(rows[s]) for s in ("train", "valid", "test")] == [32, 4, 4]
    assert ("negative", "sentence 1") in sum(rows.values(), [])
    with pytest.raises(ValueError, match="unknown sentiment domain"):
        prepare_sentiment("poems", cache=tmp_path)


def test_read_tsv_refuses_malformed_lines(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("positive\tgood\nno tab here\n")
    with pytest.raises(ValueError, match="bad.tsv:2"):
        read_tsv(path)


def test_the_real_movie_reviews():
    try:
        paths = prepare_sentiment("movies")
    except RuntimeError as error:  # no registry access
        pytest.skip(f"vaderSentiment's sdist could not be fetched: {error}")
    rows = {split: read_tsv(path) for split, path in paths.items()}
    assert [len(rows[s]) for s in ("train", "valid", "test")] == [8454, 1057, 1057]  # 10,605 minus 37 zeros
    positives = sum(label == "positive" for split in rows.values() for label, _ in split)
    assert positives == 5242
