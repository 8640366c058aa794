"""The server under pressure, with a tiny model: 503 while loading, API keys, clients that go away mid-stream,
bursts past the queue, and timeouts — never a hang, never a 500."""

import concurrent.futures
import http.client
import json
import threading
import time

import pytest
from server_harness import call, live_server, served, wait_until_ready

from glassformer.serving import ServeConfig

STEP_SECONDS = 0.02


@pytest.fixture
def slow_lm(tiny_lm):
    """The tiny model, each forward pass made to take ``STEP_SECONDS`` (so that streams last long enough to
    interrupt)."""
    model, tokenizer = tiny_lm
    handle = model.register_forward_pre_hook(lambda module, args: time.sleep(STEP_SECONDS))
    yield model, tokenizer
    handle.remove()


def open_stream(base: str, body: dict) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.request(
        "POST", "/v1/completions", json.dumps({**body, "stream": True}), {"Content-Type": "application/json"}
    )
    return connection, connection.getresponse()


def read_events(response) -> list[str]:
    events = []
    for line in response:
        if line.startswith(b"data: "):
            events.append(line[6:].strip().decode())
            if events[-1] == "[DONE]":
                break
    return events


def test_health_is_503_while_loading_then_200(tiny_lm):
    release = threading.Event()

    def load():
        release.wait(30)
        return served(*tiny_lm)

    with live_server(load, ServeConfig(max_batch=2, max_context=64), wait=False) as (base, _):
        for path in ("/health", "/v1/models"):
            status, body, headers = call("GET", base + path)
            assert status == 503, (path, body)
        assert body["error"]["message"] == "the model is still loading" and headers["retry-after"] == "5"
        release.set()
        wait_until_ready(base)
        assert call("GET", base + "/v1/models")[0] == 200


def test_a_failed_load_is_reported_by_health(tiny_lm):
    def load():
        raise FileNotFoundError("no model at nowhere/")

    with live_server(load, ServeConfig(), wait=False) as (base, state):
        assert state.loaded.wait(10)
        status, body, _ = call("GET", base + "/health")
        assert status == 503 and body["status"] == "error" and "no model at nowhere/" in body["message"]


def test_an_api_key_is_required_when_set(tiny_lm):
    with live_server(lambda: served(*tiny_lm), ServeConfig(api_key="s3cret")) as (base, _):
        body = {"prompt": "the", "max_tokens": 2}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            status, answer, _ = call("POST", base + "/v1/completions", body, headers)
            assert status == 401 and answer["error"]["code"] == "invalid_api_key"
        assert call("GET", base + "/v1/models")[0] == 401
        assert call("POST", base + "/v1/completions", body, {"Authorization": "Bearer s3cret"})[0] == 200
        assert call("GET", base + "/health")[0] == 200  # health stays open for load balancers


def test_a_pool_smaller_than_the_context_bounds_each_request_and_refuses_more_with_a_400(tiny_lm):
    """--kv-blocks 1 (a block of 32 positions) under the tiny model's 64-token context: a request without max_tokens
    is answered within the pool (not refused), one asking for more than the pool is a 400 naming --kv-blocks."""
    config = ServeConfig(max_batch=2, max_context=64, kv_blocks=1, prefix_cache_tokens=0)
    with live_server(lambda: served(*tiny_lm, max_batch=2), config) as (base, state):
        status, answer, _ = call("POST", base + "/v1/completions", {"prompt": "the cat", "max_tokens": 40})
        assert status == 400 and answer["error"]["param"] == "max_tokens"
        assert "exceeds this server's key/value cache (--kv-blocks) of 32 tokens" in answer["error"]["message"]
        assert state.scheduler.max_sequence == 32
        status, answer, _ = call("POST", base + "/v1/completions", {"prompt": "the cat", "temperature": 0})
        assert status == 200 and answer["usage"]["total_tokens"] <= 32


def test_a_client_that_goes_away_mid_stream_frees_its_slot_at_once(slow_lm):
    model, tokenizer = slow_lm
    with live_server(lambda: served(model, tokenizer, max_batch=2), ServeConfig(max_batch=2, max_context=64)) as (
        base,
        state,
    ):
        scheduler = state.scheduler
        _, other = open_stream(base, {"prompt": "the dog", "max_tokens": 40, "temperature": 0})
        connection, response = open_stream(base, {"prompt": "the cat", "max_tokens": 50, "temperature": 0})
        for _ in range(3):  # a few tokens arrive, then the client hangs up
            assert response.readline().startswith(b"data: ")
            response.readline()
        assert scheduler.active == 2
        steps = scheduler.counters.steps
        connection.sock.shutdown(2)
        connection.close()
        deadline = time.monotonic() + 10
        while scheduler.active > 1 and time.monotonic() < deadline:
            time.sleep(0.002)
        assert scheduler.active == 1 and scheduler.counters.cancelled == 1
        assert scheduler.counters.steps - steps <= 2  # freed within a step or two of the hang-up
        events = read_events(other)  # the other stream goes on to its end, untouched
        assert events[-1] == "[DONE]" and json.loads(events[-2])["choices"][0]["finish_reason"] == "length"
        assert call("GET", base + "/health")[1]["active"] == 0


def test_a_burst_past_the_queue_gets_200s_and_503s_only(slow_lm):
    model, tokenizer = slow_lm
    config = ServeConfig(max_batch=2, max_context=64, max_queue=2)
    with live_server(lambda: served(model, tokenizer, max_batch=2), config) as (base, state):

        def ask(i):
            return call(
                "POST", base + "/v1/completions", {"prompt": "the", "max_tokens": 10, "temperature": 0}, timeout=60
            )

        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            results = list(pool.map(ask, range(10)))
        statuses = sorted(status for status, _, _ in results)
        assert set(statuses) == {200, 503} and statuses.count(200) >= 2, statuses
        busy = [(body, headers) for status, body, headers in results if status == 503]
        assert all(h["retry-after"] == "1" and b["error"]["code"] == "overloaded" for b, h in busy)
        assert call("POST", base + "/v1/completions", {"prompt": "the", "max_tokens": 3})[0] == 200  # still serving
        assert state.scheduler.counters.rejected == len(busy)


def test_a_request_past_its_timeout_gets_a_504(slow_lm):
    model, tokenizer = slow_lm
    config = ServeConfig(max_batch=2, max_context=64, request_timeout=0.2)
    with live_server(lambda: served(model, tokenizer, max_batch=2), config) as (base, _):
        status, body, _ = call("POST", base + "/v1/completions", {"prompt": "the", "max_tokens": 50})
        assert status == 504 and "timeout of 0.2 s" in body["error"]["message"]
        _, response = open_stream(base, {"prompt": "the", "max_tokens": 50})
        events = read_events(response)
        assert events[-1] == "[DONE]" and "timeout" in json.loads(events[-2])["error"]["message"]
