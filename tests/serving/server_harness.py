"""A live server on 127.0.0.1 and a free port, in a thread of the test process (uvicorn over the real app), and the
plain HTTP calls the serving tests make to it (a module of its own name: ``conftest`` names clash across folders)."""

import contextlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import uvicorn

from glassformer.serving import ServeConfig, Served, Server, create_app
from glassformer.serving.loading import end_tokens, memory_plan, resident_bytes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(method: str, url: str, body=None, headers=None, timeout=60):
    """``(status, parsed JSON body, headers)`` of one request (urllib: no client library between us and the app)."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return (
                response.status,
                json.loads(response.read() or b"null"),
                {k.lower(): v for k, v in response.headers.items()},
            )
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null"), {k.lower(): v for k, v in error.headers.items()}


def wait_until_ready(base: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if call("GET", base + "/health")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError("the server did not become ready")


@contextlib.contextmanager
def live_server(load, config: ServeConfig, wait: bool = True):
    """Yields ``(base_url, server)``; ``load`` returns a ``Served``."""
    server = Server(load, config)
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(create_app(server), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not uv.started and time.monotonic() < deadline:
            time.sleep(0.01)
        if wait:
            wait_until_ready(base)
        yield base, server
    finally:
        uv.should_exit = True
        thread.join(timeout=30)


def served(model, tokenizer, name="tiny", max_batch=4, max_context=64) -> Served:
    s = Served(model, tokenizer, name, end_tokens(model, tokenizer))
    s.memory = memory_plan(model, max_batch, max_context, resident_bytes())
    return s
