"""The `glassformer` command in a subprocess, as a user runs it (imported by the CLI tests beside it)."""

import subprocess
import sys


def cli(*args: str, check: bool = True, stdin: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python -m glassformer *args``; with ``check``, fail the test (showing stderr) unless it exits 0."""
    result = subprocess.run(
        [sys.executable, "-m", "glassformer", *args], capture_output=True, text=True, timeout=timeout, input=stdin
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result
