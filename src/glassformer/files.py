"""Reading the small files glassformer trusts nothing about: one-line errors that name the file and the fix.

read_text(path)            a UTF-8 text file; missing or non-UTF-8: one error naming the file
read_json(path)            a JSON object from a UTF-8 file; missing, unreadable, non-UTF-8, malformed or
                           not-an-object files are a ``ValueError`` / ``FileNotFoundError`` naming the path
write_atomically(path, write)  ``write(tmp)`` fills a temporary file beside ``path``, which is fsynced, given the
                           permissions of a new file and renamed over ``path``: a crash leaves the old file or the
                           new one, never half of one
inside(path, root)         ``root / path`` resolved, refused if it leaves ``root`` (``../``, absolute paths,
                           symbolic links pointing out): for file names read from untrusted indexes
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def read_json(path: str | os.PathLike, what: str = "file") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); replace the {what}") from None
    except ValueError as e:  # json.JSONDecodeError, and numbers too large to parse
        raise ValueError(f"{path} is not valid JSON ({e}); replace the {what}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, not an object; replace the {what}")
    return data


def read_text(path: str | os.PathLike, what: str = "text file") -> str:
    """A UTF-8 text file; a missing or non-UTF-8 file is one error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); convert the {what} to UTF-8"
        ) from None


def write_atomically(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; a saved file gets the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@functools.cache
def umask() -> int:
    """The process's umask (read once: reading it means setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def inside(path: str, root: Path) -> Path:
    """``root / path``, refused unless it stays inside ``root``."""
    resolved_root = root.resolve()
    candidate = (root / path).resolve()
    if Path(path).is_absolute() or not candidate.is_relative_to(resolved_root):
        raise ValueError(f"{root} names the file {path!r}, which is outside the model directory; refusing to read it")
    return candidate
