"""A run directory that a crash cannot corrupt, and that nothing else can write to while a run holds it.

    glassformer-run.json   the ownership marker: written when glassformer creates (or is given an empty) directory;
                           nothing is ever deleted or replaced in a directory without it
    .lock                  held by the one process training here (a second one is refused with a clear message)
    metrics.jsonl          one JSON object per log line; on resume, the lines after the resumed step are dropped
    last/  best/           checkpoints, each with a COMPLETE marker written last

How a checkpoint is written (``write_checkpoint``): into a new, uniquely named ``.NAME.*.tmp`` directory; every
file is fsynced, then ``COMPLETE``; then ``NAME`` is renamed to ``.NAME.old``, the new one to ``NAME``, the folder
fsynced and ``.NAME.old`` removed. A kill at any point leaves one of: the old ``NAME`` complete; ``NAME`` missing with
a complete ``.NAME.old`` and maybe a complete new ``.NAME.*.tmp``; or the new ``NAME`` complete beside leftovers.
``recover`` (run on opening) puts the newest complete one back under ``NAME`` and removes the rest.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from glassformer import __version__
from glassformer.files import umask, write_atomically
from glassformer.training.distributed import World

MARKER = "glassformer-run.json"
LOCK = ".lock"
COMPLETE = "COMPLETE"
METRICS = "metrics.jsonl"
CHECKPOINTS = ("last", "best")
LEGACY_STATE = "trainer_state.json"  # a checkpoint written before COMPLETE markers: complete if this is there


def fsync_path(path: Path) -> None:
    """Flush a file, or a directory's entries, to the disk (directories: where the OS allows it)."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return  # e.g. directories cannot be opened on Windows; their entries are flushed with the files
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            fsync_path(Path(folder) / name)
        fsync_path(Path(folder))


def is_complete(checkpoint: Path) -> bool:
    """A checkpoint directory whose every file reached the disk (its ``COMPLETE`` marker was written last)."""
    return (checkpoint / COMPLETE).is_file()


def write_json_atomically(path: Path, data: Any) -> None:
    write_atomically(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1)))


class RunDirectory:
    """An opened run directory: owned (marker), locked, recovered. Use as a context manager (releases the lock).

    ``kind`` names what trains here ("translation", "language model", ...): a directory made for another kind is
    refused. ``resumable``: whether a complete ``last/`` checkpoint is there to resume from.

    With several processes (``open``), rank 0 is the ``owner``: it claims, locks, recovers and writes; the other
    ranks open the directory after it, as readers (``log`` and ``truncate_metrics`` do nothing there)."""

    def __init__(self, path: str | os.PathLike, kind: str, resume: bool, owner: bool = True):
        self.path = Path(path)
        self.kind = kind
        self.owner = owner
        self._lock: FileLock | None = None
        self._created = False
        if owner:
            self._claim(resume)
        else:
            self._check_owner()

    @classmethod
    def open(cls, path: str | os.PathLike, kind: str, resume: bool, world: World) -> RunDirectory:
        """Rank 0 opens the directory as its owner, then the other ranks as readers of what it recovered; an error
        on rank 0 (a directory in use, a run without --resume, ...) is raised on every rank."""
        if not world.distributed:
            return cls(path, kind, resume)
        owned: list[RunDirectory] = []
        world.from_main(lambda: owned.append(cls(path, kind, resume)))  # rank 0 claims; the others learn how it went
        return owned[0] if world.is_main else cls(path, kind, resume, owner=False)

    # --- opening ------------------------------------------------------------------------------------------

    def _claim(self, resume: bool) -> None:
        path = self.path
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(f"--out {path} is a file, not a directory; choose a directory for the run")
        if not path.exists() and resume:
            raise FileNotFoundError(f"nothing to resume: {path} does not exist")
        self._check_owner()
        self._created = not path.exists()
        path.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(path / LOCK, timeout=0)
        try:
            self._lock.acquire()
        except Timeout:
            self._lock = None
            raise RuntimeError(
                f"another glassformer process is training in {path}; wait for it to finish or choose another --out"
            ) from None
        try:
            self._check_owner()  # again, now that no one else can change it
            marker = path / MARKER
            if not marker.is_file():
                write_json_atomically(marker, {"kind": self.kind, "glassformer_version": __version__})
            self.recover()
            holds_run = self.resumable or (path / METRICS).exists()
            if holds_run and not resume:
                raise ValueError(
                    f"{path} already holds a {self.kind} run; pass --resume to continue it or choose another --out"
                )
        except BaseException:
            self.close(failed=True)
            raise

    def _check_owner(self) -> None:
        path = self.path
        if not path.is_dir():
            return
        marker = path / MARKER
        if marker.is_file():
            try:
                kind = json.loads(marker.read_text()).get("kind")
            except (ValueError, OSError, AttributeError) as e:
                raise ValueError(f"{marker} is unreadable ({e}); choose another --out") from None
            if kind != self.kind:
                raise ValueError(f"{path} holds a {kind} run, not a {self.kind} run; choose another --out")
            return
        if (path / "last" / LEGACY_STATE).is_file():
            return  # a run written before the marker existed
        foreign = [p.name for p in path.iterdir() if p.name != LOCK]
        if foreign:
            shown = ", ".join(sorted(foreign)[:3]) + (" ..." if len(foreign) > 3 else "")
            raise ValueError(
                f"{path} already holds files glassformer did not write ({shown}); choose a new or empty --out"
            )

    def recover(self) -> None:
        """Put back the newest complete checkpoint of each name and remove what an interrupted write left."""
        for name in CHECKPOINTS:
            final, old = self.path / name, self.path / f".{name}.old"
            new = [p for p in self.path.glob(f".{name}.*.tmp") if p.is_dir()]
            if not (is_complete(final) or (final / LEGACY_STATE).is_file()):
                complete = sorted((p for p in [*new, old] if is_complete(p)), key=_checkpoint_step, reverse=True)
                if complete:
                    if final.exists():
                        shutil.rmtree(final)
                    os.rename(complete[0], final)
                    fsync_path(self.path)
            for leftover in [*new, old]:
                if leftover.exists():
                    shutil.rmtree(leftover)
        for partial in self.path.glob(".*.tmp"):  # a metrics or record file a kill cut short before its rename
            if partial.is_file():
                partial.unlink()

    @property
    def resumable(self) -> bool:
        last = self.path / "last"
        return is_complete(last) or (last / LEGACY_STATE).is_file()

    def close(self, failed: bool = False) -> None:
        """Release the lock; after a failure, remove the directory if this run created it and wrote nothing else
        (bad data or options refused before training leave no trace)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if failed and self._created and self.path.is_dir():
            names = {p.name for p in self.path.iterdir()}
            if names <= {MARKER, LOCK}:
                for name in names:
                    (self.path / name).unlink()
                self.path.rmdir()

    def __enter__(self) -> RunDirectory:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.close(failed=kind is not None)

    # --- writing ------------------------------------------------------------------------------------------

    def write_checkpoint(self, name: str, write: Callable[[Path], None], step: int) -> None:
        """``write(folder)`` fills a new folder, which then replaces ``NAME`` as described in the module's doc."""
        tmp = Path(tempfile.mkdtemp(dir=self.path, prefix=f".{name}.", suffix=".tmp"))
        os.chmod(tmp, 0o777 & ~umask())
        try:
            write(tmp)
            fsync_tree(tmp)
            (tmp / COMPLETE).write_text(json.dumps({"step": step, "time": time.time()}))
            fsync_path(tmp / COMPLETE)
            fsync_path(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        final, old = self.path / name, self.path / f".{name}.old"
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            os.rename(final, old)
        os.rename(tmp, final)
        fsync_path(self.path)
        if old.exists():
            shutil.rmtree(old)

    def log(self, record: dict[str, Any]) -> None:
        if not self.owner:
            return
        with open(self.path / METRICS, "a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_metrics(self, step: int | None) -> None:
        """Keep the metrics up to ``step`` (None: none), dropping what a run killed after its last checkpoint logged,
        and any line a kill cut short."""
        metrics = self.path / METRICS
        if not self.owner or not metrics.exists():
            return
        kept = []
        for line in metrics.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if step is not None and isinstance(record, dict) and record.get("step", 0) <= step:
                kept.append(line + "\n")
        write_atomically(metrics, lambda tmp: Path(tmp).write_text("".join(kept)))


def _checkpoint_step(checkpoint: Path) -> int:
    try:
        return int(json.loads((checkpoint / COMPLETE).read_text())["step"])
    except (ValueError, KeyError, OSError, TypeError):
        return -1


def data_fingerprint(data: str | Path | None) -> dict[str, str]:
    """``{resolved path: sha256}`` of the files a run's ``data`` names (a path, or two joined by a comma); named
    corpora (``bible``, ``sentiment``, None) have none here — the cache's manifest checks those."""
    from glassformer.data.cache import sha256_of

    if data is None:
        return {}
    paths = [Path(p) for p in str(data).split(",")]
    return {str(p.resolve()): sha256_of(p) for p in paths if p.is_file()}


def check_data_fingerprint(recorded: dict[str, str] | None, data: str | Path | None) -> None:
    """Refuse data files that changed since the run recorded them (resume and evaluate use the same splits)."""
    now = data_fingerprint(data)
    for path, sha256 in (recorded or {}).items():
        if now.get(path) != sha256:
            state = "is gone" if not Path(path).is_file() else f"changed (sha256 {now.get(path, '?')[:12]}…)"
            raise ValueError(
                f"the run's data file {path} {state} since the run started (sha256 {sha256[:12]}…); put the "
                "original back, or start a new run with another --out"
            )


def read_run_record(path: Path) -> dict[str, Any]:
    """A run's record (``translation.json``, ...): one line naming the file when it is missing or unreadable."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; pass the run directory that `glassformer train` wrote")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); the run directory is damaged") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path} does not hold a JSON object; the run directory is damaged")
    return record
