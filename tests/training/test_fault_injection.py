"""SIGKILL at every file-system step of a checkpoint write (the first and a later one) and at random moments:
each killed run resumes to the same final weights as an uninterrupted run, bit for bit, with nothing left over."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).parent / "kill_harness.py"


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="the harness forks a process per kill")
def test_every_kill_resumes_to_the_uninterrupted_weights(tmp_path):
    result = subprocess.run(
        [sys.executable, str(HARNESS), str(tmp_path), "3"], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    kills = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(kills) >= 2 * 10 + 1  # each write has more than ten distinct steps
    assert [k for k in kills if not (k["resumed"] == 0 and k["identical"] and not k["leftovers"])] == []
