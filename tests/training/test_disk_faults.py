"""A full disk and a read-only one under a training run, on a small tmpfs mounted by the test: one line, exit 2,
and the last good checkpoint intact (skipped, saying why, where the test may not mount a file system)."""

import contextlib
import io
import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from glassformer.cli.main import main
from glassformer.training.run_directory import COMPLETE

TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog {i % 7}\n" for i in range(300))
SHAPE = ["--d-model", "16", "--num-layers", "1", "--num-heads", "2", "--d-ff", "32", "--block-size", "16"]


def mount_tmpfs(path: Path, size: str) -> str | None:
    """Mount a tmpfs at ``path``; None, or why it could not be done."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return None if result.returncode == 0 else f"mount failed: {result.stderr.decode().strip()}"


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    why = mount_tmpfs(disk, "4m")
    if why:
        pytest.skip(why)
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def train(out: Path, corpus: Path, *extra: str) -> tuple[int, list[str]]:
    """``glassformer train lm ...`` through the CLI's ``main``: its exit status and its stderr lines."""
    command = ["train", "lm", "--data", str(corpus), "--out", str(out), *SHAPE,
               "--eval-every", "2", "--quiet", "--device", "cpu", *extra]  # fmt: skip
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = main(command)
    return code, [line for line in stderr.getvalue().splitlines() if not line.startswith("glassformer: device")]


def test_a_full_disk_fails_in_one_line_and_keeps_the_last_checkpoint(small_disk, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    run = small_disk / "run"
    assert train(run, corpus, "--max-steps", "2")[0] == 0
    before = (run / "last" / "model.safetensors").read_bytes()
    filler = small_disk / "filler"
    with open(filler, "wb", buffering=0) as f:  # fill the disk to the last byte
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    code, lines = train(run, corpus, "--max-steps", "4", "--resume")
    assert code == 2 and len(lines) == 1, lines
    assert "No space left on device" in lines[0] and "free some space" in lines[0]
    assert (run / "last" / "model.safetensors").read_bytes() == before  # the last good checkpoint, untouched
    assert json.loads((run / "last" / COMPLETE).read_text())["step"] == 2
    filler.unlink()
    assert train(run, corpus, "--max-steps", "4", "--resume")[0] == 0  # space again: it goes on
    assert not [p.name for p in run.iterdir() if p.name.endswith((".tmp", ".old"))]


def test_a_read_only_disk_fails_in_one_line(small_disk, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    run = small_disk / "run"
    assert train(run, corpus, "--max-steps", "2")[0] == 0
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    for command in (("--max-steps", "4", "--resume"), ("--max-steps", "4")):
        code, lines = train(run if "--resume" in command else small_disk / "new", corpus, *command)
        assert code == 2 and len(lines) == 1, lines
        assert "Read-only file system" in lines[0] and "write somewhere else" in lines[0]
