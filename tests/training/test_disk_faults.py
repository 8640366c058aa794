"""A full disk and a read-only one under a training run, on a small tmpfs mounted by the test: one line, exit 2,
and the last good checkpoint intact (skipped, saying why, where the test may not mount a file system)."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

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


def train(out: Path, corpus: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "glassformer", "train", "lm", "--data", str(corpus), "--out", str(out), *SHAPE,
               "--eval-every", "2", "--quiet", "--device", "cpu", *extra]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if not line.startswith("glassformer: device")]


def test_a_full_disk_fails_in_one_line_and_keeps_the_last_checkpoint(small_disk, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    run = small_disk / "run"
    assert train(run, corpus, "--max-steps", "2").returncode == 0
    before = (run / "last" / "model.safetensors").read_bytes()
    filler = small_disk / "filler"
    with open(filler, "wb") as f:  # fill the disk to the last byte
        try:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        except OSError:
            pass
    result = train(run, corpus, "--max-steps", "4", "--resume")
    lines = error_lines(result)
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "No space left on device" in lines[0] and "free some space" in lines[0]
    assert (run / "last" / "model.safetensors").read_bytes() == before  # the last good checkpoint, untouched
    assert json.loads((run / "last" / COMPLETE).read_text())["step"] == 2
    filler.unlink()
    assert train(run, corpus, "--max-steps", "4", "--resume").returncode == 0  # space again: it goes on
    assert not [p.name for p in run.iterdir() if p.name.endswith((".tmp", ".old"))]


def test_a_read_only_disk_fails_in_one_line(small_disk, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    run = small_disk / "run"
    assert train(run, corpus, "--max-steps", "2").returncode == 0
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    for command in (("--max-steps", "4", "--resume"), ("--max-steps", "4")):
        result = train(run if "--resume" in command else small_disk / "new", corpus, *command)
        lines = error_lines(result)
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert "Read-only file system" in lines[0] and "write somewhere else" in lines[0]
