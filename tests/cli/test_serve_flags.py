"""`glassformer serve`'s flags reach the library's checks: a bad value or a missing model is one line and exit
status 2, before anything listens (the server itself: tests/serving)."""

import socket

import pytest
from run_glassformer import cli


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--max-batch", "0"), "--max-batch must be a positive integer"),
        (("--max-context", "-5"), "--max-context must be a positive integer"),
        (("--max-queue", "0"), "--max-queue must be a positive integer"),
        (("--port", "70000"), "--port must be an integer in [0, 65535]"),
        (("--request-timeout", "-1"), "--request-timeout must be a number > 0"),
        (("--prompt-lookup", "-1"), "--prompt-lookup must be an integer >= 0"),
        (("--prompt-lookup", "4", "--batch-invariant"), "--prompt-lookup and --batch-invariant do not go together"),
        (("--model", "nowhere/at/all"), "no model directory at 'nowhere/at/all'"),
        (("--embedding-model", "nowhere/at/all"), "no model directory at 'nowhere/at/all'"),
    ],
)
def test_serve_refuses_bad_flags_and_missing_models_at_once(args, message, gpt_dir):
    result = cli("serve", "--model", str(gpt_dir), *args, check=False)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_serve_help_names_every_endpoint():
    result = cli("serve", "--help", check=False)
    for text in ("/v1/completions", "/v1/chat/completions", "/v1/embeddings", "--api-key", "GLASSFORMER_API_KEY"):
        assert text in result.stdout


def test_serve_refuses_a_port_in_use_in_one_line(gpt_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("serve", "--model", str(gpt_dir), "--port", str(port), check=False)
    assert result.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in result.stderr, result.stderr
    assert "choose another --port" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = cli("serve", "--model", str(gpt_dir), "--host", "no-such-host.invalid", check=False)
    assert result.returncode == 2 and "--host 'no-such-host.invalid' is not an address" in result.stderr
