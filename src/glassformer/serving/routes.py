"""The routes of ``glassformer serve`` (``glassformer.serving.app`` lists them), each a function of the request; the
``Server`` they serve is the app's state (``request.app.state.server``).

    health, metrics              what the scheduler is doing (503 while loading)
    models                       the served model (and the embedding model)
    completions, chat_completions  a prompt or a conversation, through ``generate``: whole, or streamed (``stream``)
    embeddings                   sentence embeddings
    page                         the chat page
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
from collections.abc import AsyncIterator
from importlib import resources

import torch
from starlette.requests import Request as HTTPRequest
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from glassformer.serving.protocol import (
    APIError,
    Sampling,
    parse_json,
    read_body,
    read_embedding_input,
    read_messages,
    read_prompt,
    read_sampling,
)
from glassformer.serving.responses import Reply
from glassformer.serving.scheduler import Event, Overloaded, Request
from glassformer.serving.state import Server

COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions; chat answers until done


def server_of(request: HTTPRequest) -> Server:
    return request.app.state.server


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def _api(handler):
    """Turn an ``APIError`` (and a body that is not JSON) into OpenAI's error response."""

    async def route(request: HTTPRequest) -> Response:
        try:
            return await handler(request)
        except APIError as error:
            return error_response(error)

    return route


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


async def health(request: HTTPRequest) -> Response:
    server = server_of(request)
    if server.scheduler is None:
        status = "error" if server.error else "loading"
        return JSONResponse({"status": status, "message": server.error}, status_code=503)
    s = server.scheduler
    return JSONResponse({"status": "ok", "active": s.active, "waiting": s.waiting, "max_batch": s.max_batch})


async def metrics(request: HTTPRequest) -> Response:
    server = server_of(request)
    if server.scheduler is None:
        return JSONResponse({"status": "loading"}, status_code=503)
    s = server.scheduler
    return JSONResponse(
        {
            "active": s.active,
            "waiting": s.waiting,
            "max_batch": s.max_batch,
            "max_queue": s.max_queue,
            "max_context": s.max_context,
            **dataclasses.asdict(s.counters),
            "memory": server.served.memory,
        }
    )


@_api
async def models(request: HTTPRequest) -> Response:
    server = server_of(request)
    server.check(request)
    names = [server.served.name] + ([server.served.embedding_name] if server.served.encoder else [])
    created = int(server.served.created)
    data = [{"id": name, "object": "model", "created": created, "owned_by": "glassformer"} for name in names]
    return JSONResponse({"object": "list", "data": data})


async def read(request: HTTPRequest) -> tuple[dict, str, Sampling]:
    """What both completion routes read first: the key, the JSON body, the model's name, the sampling fields."""
    server = server_of(request)
    server.check(request)
    body = parse_json(await read_body(request))
    return body, server.check_model(body), read_sampling(body)


@_api
async def completions(request: HTTPRequest) -> Response:
    server = server_of(request)
    body, name, sampling = await read(request)
    prompt = read_prompt(body)
    tokenizer = server.served.tokenizer
    if isinstance(prompt, str):
        ids = tokenizer.encode(prompt)
    else:
        size = server.served.model.config.vocab_size
        bad = [t for t in prompt if not 0 <= t < size]
        if bad:
            raise APIError(400, f"token id {bad[0]} is outside the vocabulary [0, {size})", param="prompt")
        ids = prompt
    return await generate(request, "completion", name, ids, sampling, COMPLETION_DEFAULT_MAX_TOKENS)


@_api
async def chat_completions(request: HTTPRequest) -> Response:
    server = server_of(request)
    body, name, sampling = await read(request)
    messages = read_messages(body)
    tokenizer = server.served.tokenizer
    if not tokenizer.chat_template:
        raise APIError(400, f"{name} has no chat template; use /v1/completions with this model")
    try:
        ids = tokenizer.encode_chat(messages)
    except ValueError as error:
        raise APIError(400, str(error), param="messages") from None
    return await generate(request, "chat", name, ids, sampling, None)


async def generate(
    request: HTTPRequest, kind: str, name: str, ids: list[int], sampling: Sampling, default_max: int | None
) -> Response:
    server = server_of(request)
    scheduler = server.scheduler
    context = scheduler.max_context
    if len(ids) >= context:
        raise APIError(
            400, f"the prompt has {len(ids)} tokens and this server's context is {context}; shorten it",
            code="context_length_exceeded", param="messages" if kind == "chat" else "prompt",
        )  # fmt: skip
    max_tokens = sampling.max_tokens
    if max_tokens is None:
        max_tokens = min(default_max or context, context - len(ids))
    elif len(ids) + max_tokens > context:
        raise APIError(
            400, f"the prompt ({len(ids)} tokens) plus max_tokens ({max_tokens}) exceeds this server's context of "
            f"{context} tokens; lower max_tokens or shorten the prompt", code="context_length_exceeded",
            param="max_tokens",
        )  # fmt: skip
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[Event] = asyncio.Queue()
    job = Request(
        prompt=ids, max_tokens=max_tokens, deliver=lambda e: loop.call_soon_threadsafe(events.put_nowait, e),
        temperature=sampling.temperature, top_p=sampling.top_p, seed=sampling.seed, stop=sampling.stop,
        timeout=server.config.request_timeout,
    )  # fmt: skip
    try:
        scheduler.submit(job)
    except Overloaded as error:
        raise APIError(
            503, f"the server is busy ({error}); retry shortly", type="server_overloaded",
            code="overloaded", headers={"Retry-After": "1"},
        ) from None  # fmt: skip
    reply = Reply(kind, name)
    if sampling.stream:
        return StreamingResponse(
            stream(request, job, events, reply, sampling.include_usage),
            media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )  # fmt: skip
    watcher = asyncio.create_task(_client_gone(request))
    try:
        text = []
        while True:
            getter = asyncio.ensure_future(events.get())
            done, _ = await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:  # the client went away: nobody to answer
                getter.cancel()
                scheduler.cancel(job)
                return Response(status_code=499)
            event = getter.result()
            if event.kind == "text":
                text.append(event.text)
            elif event.kind == "error":
                raise APIError(event.status, event.message, type="timeout" if event.status == 504 else "server_error")
            else:
                return JSONResponse(reply.whole("".join(text), event))
    finally:
        watcher.cancel()


async def stream(
    request: HTTPRequest, job: Request, events: asyncio.Queue, reply: Reply, include_usage: bool
) -> AsyncIterator[str]:
    server = server_of(request)
    ended = False
    watcher = asyncio.create_task(_client_gone(request))
    watcher.add_done_callback(lambda _: None if ended else server.scheduler.cancel(job))
    try:
        first = reply.first_chunk()
        if first is not None:
            yield _sse(first)
        while True:
            event = await events.get()
            if event.kind == "text":
                yield _sse(reply.chunk(event.text))
            elif event.kind == "error":
                ended = True
                yield _sse({"error": {"message": event.message, "type": "server_error", "code": event.status}})
                yield _sse("[DONE]")
                return
            else:
                ended = True
                yield _sse(reply.chunk("", event.finish_reason))
                if include_usage:
                    yield _sse(reply.usage_chunk(event))
                yield _sse("[DONE]")
                return
    finally:
        watcher.cancel()
        if not ended:
            server.scheduler.cancel(job)


@_api
async def embeddings(request: HTTPRequest) -> Response:
    server = server_of(request)
    server.check(request)
    body = parse_json(await read_body(request))
    name = server.check_model(body, embedding=True)
    texts = read_embedding_input(body)
    encoder = server.served.encoder

    def embed() -> tuple[torch.Tensor, int]:
        with server.encoder_lock:
            tokens = sum(len(ids) for ids in encoder.tokenizer.encode(texts))
            return encoder.embed(texts), tokens

    vectors, tokens = await asyncio.to_thread(embed)
    as_base64 = body.get("encoding_format") == "base64"
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": base64.b64encode(v.numpy().astype("<f4").tobytes()).decode() if as_base64 else v.tolist(),
        }
        for i, v in enumerate(vectors)
    ]
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return JSONResponse({"object": "list", "data": data, "model": name, "usage": usage})


async def page(request: HTTPRequest) -> Response:
    return HTMLResponse(resources.files("glassformer.serving").joinpath("chat_page.html").read_text("utf-8"))


async def _client_gone(request: HTTPRequest) -> None:
    """Returns when the client disconnects."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
