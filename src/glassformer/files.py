"""Reading the small files glassformer trusts nothing about: one-line errors that name the file and the fix.

read_text(path)            a UTF-8 text file; missing or non-UTF-8: one error naming the file
read_json(path)            a JSON object from a UTF-8 file; missing, unreadable, non-UTF-8, malformed or
                           not-an-object files are a ``ValueError`` / ``FileNotFoundError`` naming the path
inside(path, root)         ``root / path`` resolved, refused if it leaves ``root`` (``../``, absolute paths,
                           symbolic links pointing out): for file names read from untrusted indexes
"""

from __future__ import annotations

import json
import os
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


def inside(path: str, root: Path) -> Path:
    """``root / path``, refused unless it stays inside ``root``."""
    resolved_root = root.resolve()
    candidate = (root / path).resolve()
    if Path(path).is_absolute() or not candidate.is_relative_to(resolved_root):
        raise ValueError(f"{root} names the file {path!r}, which is outside the model directory; refusing to read it")
    return candidate
