"""``glassformer serve`` as a user starts it (a real process), then a bounded load test: 16 clients streaming for
``GLASSFORMER_LOAD_SECONDS`` seconds; every request ends with ``[DONE]`` or an error status, none is lost, and the
server's resident memory stays within the budget it printed when it started. 12 s by default, to keep the suite
within its time; ``GLASSFORMER_LOAD_SECONDS=60 pytest tests/serving/test_serve_command.py`` for a minute."""

import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from server_harness import call, free_port, wait_until_ready

LOAD_SECONDS = float(os.environ.get("GLASSFORMER_LOAD_SECONDS", "12"))
CLIENTS = 16
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def resident_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def serve(tmp_path, *args):
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 — closed by the caller through the process
    process = subprocess.Popen([sys.executable, "-m", "glassformer", "serve", *args], stderr=log, stdout=log)
    return process, tmp_path / "serve.log"


async def stream_once(port: int, body: dict) -> str:
    """One streamed completion over a raw HTTP/1.1 connection: ``done`` (200 ending in [DONE]) or the status."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = json.dumps({**body, "stream": True}).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + payload)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), timeout=60)  # to the end: the server closes the connection
    writer.close()
    status = int(data.split(b" ", 2)[1])
    if status != 200:
        return str(status)
    events = re.findall(rb"data: (.*?)\n\n", data)
    return "done" if events and events[-1] == b"[DONE]" else "cut short"


async def load(port: int, seconds: float, pid: int) -> tuple[dict, float]:
    outcomes: dict[str, int] = {}
    peak = 0.0
    end = time.monotonic() + seconds

    async def client(number: int) -> None:
        rng = random.Random(number)
        while time.monotonic() < end:
            prompt = rng.choice(["the cat", "a bird sang", "the dog ate the"])
            body = {"prompt": prompt, "max_tokens": rng.randint(3, 40), "temperature": rng.choice([0, 0.8])}
            outcome = await stream_once(port, body)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if outcome == "503":  # as a well-behaved client: wait as long as Retry-After says (1 s)
                await asyncio.sleep(1)

    async def watch() -> None:
        nonlocal peak
        while time.monotonic() < end:
            peak = max(peak, resident_mib(pid))
            await asyncio.sleep(0.25)

    await asyncio.gather(watch(), *(client(i) for i in range(CLIENTS)))
    return outcomes, peak


@pytest.mark.slow
def test_serve_under_load_loses_nothing_and_stays_within_its_memory_budget(gpt_dir, tmp_path):
    port = free_port()
    process, log = serve(tmp_path, "--model", str(gpt_dir), "--port", str(port), "--max-batch", "4",
                         "--max-queue", "8", "--max-context", "64")  # fmt: skip
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", 120)
        time.sleep(0.2)
        text = log.read_text()
        assert f"serving {gpt_dir} on http://127.0.0.1:{port}" in text, text
        assert "decoding step: the modules (model.forward)" in text  # a float GPT-2 layout: no fused step
        budget = float(re.search(r"budget (\d+) MiB", text).group(1))
        outcomes, peak = asyncio.run(load(port, LOAD_SECONDS, process.pid))
        ARTIFACTS.mkdir(exist_ok=True)  # the figures, for whoever reads a CI run
        figures = {
            "seconds": LOAD_SECONDS,
            "clients": CLIENTS,
            "outcomes": outcomes,
            "peak_mib": peak,
            "budget_mib": budget,
        }
        (ARTIFACTS / "serve_load.json").write_text(json.dumps(figures, indent=1))
        assert set(outcomes) <= {"done", "503"} and outcomes.get("done", 0) > CLIENTS, outcomes
        assert peak <= budget, f"resident {peak:.0f} MiB > budget {budget:.0f} MiB"
        status, metrics, _ = call("GET", f"http://127.0.0.1:{port}/health")
        assert metrics["active"] == 0 and metrics["waiting"] == 0 and metrics["failed"] == 0
        assert metrics["finished"] == outcomes["done"] and metrics["rejected"] == outcomes.get("503", 0)
        process.send_signal(signal.SIGINT)  # Ctrl-C: the way to stop a server, a clean stop (exit status 0)
        assert process.wait(30) == 0
        assert "the server stopped (Ctrl-C or SIGTERM) and shut down cleanly" in log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
