"""The OpenAI HTTP API's request bodies, read and checked; every mistake an ``APIError`` (a 4xx with OpenAI's
error shape ``{"error": {"message", "type", "code", "param"}}``), never a 500.

Fields the server does not know are ignored, as OpenAI's clients expect; known fields asking for something this
server does not do (``echo``, ``tools``, ``logit_bias``, ...) are refused by name rather than silently dropped.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from starlette.requests import Request

MAX_STOP_STRINGS = 4  # as OpenAI
MAX_CHOICES = 16  # n
MAX_TOP_LOGPROBS = {"chat": 20, "completion": 5}  # as OpenAI
MAX_BODY_BYTES = 16 << 20  # a request body larger than this is refused (413) before it is all in memory


class APIError(Exception):
    """An HTTP error with OpenAI's body; ``headers`` e.g. ``Retry-After``."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}


async def read_body(request: Request) -> bytes:
    """The request's body, read as it arrives; past ``MAX_BODY_BYTES`` a 413 (declared or not)."""
    declared = request.headers.get("content-length", "")
    too_large = APIError(413, f"the request body is larger than {MAX_BODY_BYTES >> 20} MiB", code="body_too_large")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(raw: bytes) -> dict:
    """The request's JSON object, or a 400 saying what is wrong with it."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise APIError(400, f"the request body is not valid JSON ({error})", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(body).__name__}", code="invalid_json")
    return body


def _number(body: dict, name: str, default: float | None, low: float, high: float | None, integer: bool = False):
    value = body.get(name)
    if value is None:
        return default
    kinds = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        kind = "an integer" if integer else "a number"
        raise APIError(400, f"{name} must be {kind}, got {value!r}", code="invalid_type", param=name)
    if value < low or (high is not None and value > high):
        bounds = f">= {low:g}" if high is None else f"between {low:g} and {high:g}"
        raise APIError(400, f"{name} must be {bounds}, got {value!r}", code="invalid_value", param=name)
    return value


def _refuse_unsupported(body: dict) -> None:
    for name in ("echo", "tools", "functions", "suffix", "logit_bias"):
        if body.get(name) not in (None, False, 0, [], {}):
            raise APIError(400, f"{name} is not supported by this server; leave it out", param=name)
    if body.get("best_of") not in (None, 1):
        raise APIError(400, "best_of is not supported by this server; leave it out", param="best_of")


@dataclasses.dataclass
class Sampling:
    """The decoding fields shared by both completion endpoints."""

    max_tokens: int | None
    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None  # None: none; k: each token's log-probability and the k most likely tokens'
    json: bool = False  # response_format json_object / json_schema: the answer is JSON (matching ``schema``)
    schema: dict | None = None
    top_k: int | None = None  # vLLM's extension: only the k most likely tokens are drawn from (None, 0, -1: all)


def read_logprobs(body: dict, kind: str) -> int | None:
    """Chat: ``logprobs`` true/false and ``top_logprobs`` 0..20; completions: ``logprobs`` 0..5 (the top count)."""
    top = MAX_TOP_LOGPROBS[kind]
    if kind == "completion":
        return _number(body, "logprobs", None, 0, top, integer=True)
    asked = body.get("logprobs", False)
    if not isinstance(asked, bool) and asked is not None:
        raise APIError(400, f"logprobs must be true or false, got {asked!r}", code="invalid_type", param="logprobs")
    count = _number(body, "top_logprobs", None, 0, top, integer=True)
    if count is not None and not asked:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    return (count or 0) if asked else None


def read_top_k(body: dict) -> int | None:
    """``top_k`` (vLLM's extension of the API): draw only from the k most likely tokens; 0 or -1 turn it off."""
    value = _number(body, "top_k", None, -1, None, integer=True)
    return None if value in (None, 0, -1) else value


def read_response_format(body: dict) -> tuple[bool, dict | None]:
    """``response_format``: ``{"type": "text"}`` (free text), ``{"type": "json_object"}`` (any JSON object) or
    ``{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`` (OpenAI's shape): ``(json, schema)``."""
    spec = body.get("response_format")
    if spec is None:
        return False, None
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise APIError(400, "response_format must be {\"type\": \"text\" | \"json_object\" | \"json_schema\"}",
                       param="response_format")  # fmt: skip
    if kind != "json_schema":
        return kind == "json_object", None
    schema = (spec.get("json_schema") or {}).get("schema") if isinstance(spec.get("json_schema"), dict) else None
    if not isinstance(schema, dict):
        raise APIError(400, "response_format.json_schema.schema must be a JSON schema object",
                       param="response_format")  # fmt: skip
    return True, schema


def read_sampling(body: dict, kind: str = "completion") -> Sampling:
    """The decoding fields of a ``kind`` ("chat" or "completion") request, each checked."""
    _refuse_unsupported(body)
    max_tokens = _number(body, "max_tokens", None, 1, None, integer=True)
    if max_tokens is None:
        max_tokens = _number(body, "max_completion_tokens", None, 1, None, integer=True)
    stop = body.get("stop")
    if stop is None:
        stop = ()
    elif isinstance(stop, str):
        stop = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= MAX_STOP_STRINGS:
        stop = tuple(stop)
    else:
        raise APIError(400, f"stop must be a string or a list of at most {MAX_STOP_STRINGS} strings", param="stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError(400, f"stream must be true or false, got {stream!r}", code="invalid_type", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise APIError(400, "stream_options must be an object", param="stream_options")
    return Sampling(
        max_tokens=max_tokens,
        temperature=float(_number(body, "temperature", 1.0, 0.0, 2.0)),
        top_p=float(_number(body, "top_p", 1.0, 0.0, 1.0)),
        seed=_number(body, "seed", None, 0, 2**63 - 1, integer=True),
        stop=stop,
        stream=stream,
        include_usage=bool(options.get("include_usage", False)),
        n=_number(body, "n", 1, 1, MAX_CHOICES, integer=True),
        presence_penalty=float(_number(body, "presence_penalty", 0.0, -2.0, 2.0)),
        frequency_penalty=float(_number(body, "frequency_penalty", 0.0, -2.0, 2.0)),
        logprobs=read_logprobs(body, kind),
        top_k=read_top_k(body),
        **dict(zip(("json", "schema"), read_response_format(body), strict=True)),
    )


def read_prompt(body: dict) -> str | list[int]:
    """``prompt``: a string, a list of one string, or a list of token ids."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise APIError(400, "prompt is empty; give some text to continue", param="prompt")
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return prompt
    if isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(t, str) for t in prompt):
        raise APIError(400, "several prompts in one request are not supported; send one request each", param="prompt")
    raise APIError(400, "prompt must be a non-empty string or a list of token ids", param="prompt")


ROLES = ("system", "user", "assistant")


def read_messages(body: dict) -> list[dict[str, str]]:
    """``messages``: ``[{"role", "content"}]`` with content a string or a list of ``{"type": "text"}`` parts."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "messages must be a non-empty list of {role, content} objects", param="messages")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise APIError(400, f"messages[{i}] must have a role of {', '.join(ROLES)}", param=f"messages[{i}]")
        content = message.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            if not all(
                isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
            ):
                raise APIError(400, f"messages[{i}].content parts must be text parts", param=f"messages[{i}].content")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise APIError(400, f"messages[{i}].content must be a string", param=f"messages[{i}].content")
        out.append({"role": message["role"], "content": content})
    return out


def read_continue_final_message(body: dict, messages: list[dict[str, str]]) -> bool:
    """vLLM's ``continue_final_message``: the last message is the assistant's unfinished answer, which the model
    continues (its turn is left open) instead of starting a new turn; ``add_generation_prompt`` must not be true."""
    asked = body.get("continue_final_message", False)
    if not isinstance(asked, bool):
        raise APIError(400, f"continue_final_message must be true or false, got {asked!r}", code="invalid_type",
                       param="continue_final_message")  # fmt: skip
    if asked and messages[-1]["role"] != "assistant":
        raise APIError(400, "continue_final_message needs the last message to be the assistant's answer to continue",
                       param="continue_final_message")  # fmt: skip
    if asked and body.get("add_generation_prompt") is True:
        raise APIError(400, "continue_final_message and add_generation_prompt exclude each other; leave one out",
                       param="add_generation_prompt")  # fmt: skip
    return asked


def read_embedding_input(body: dict) -> list[str]:
    texts: Any = body.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
        raise APIError(400, "input must be a non-empty string or a list of non-empty strings", param="input")
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64", None):
        raise APIError(400, f"encoding_format must be 'float' or 'base64', got {encoding!r}", param="encoding_format")
    return texts
