"""The routes of ``glassformer serve`` (``glassformer.serving.app`` lists them), each a function of the request; the
``Server`` they serve is the app's state (``request.app.state.server``).

    health                       what the scheduler is doing, its counters, the memory plan (JSON; 503 while loading)
    metrics                      Prometheus's text: latencies, queue, tokens (glassformer.serving.metrics)
    models                       the served model (and the embedding model)
    completions, chat_completions  a prompt or a conversation, through ``generate``: ``n`` choices, whole or
                                 streamed (``stream``), with ``logprobs`` where asked
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
    read_continue_final_message,
    read_embedding_input,
    read_messages,
    read_prompt,
    read_sampling,
)
from glassformer.serving.requests import Event, Overloaded, Request, mailbox
from glassformer.serving.responses import Reply
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
    """``status`` ok (503 while loading or after a failed load), what the scheduler is doing, its counters and the
    memory plan, as JSON."""
    server = server_of(request)
    if server.scheduler is None:
        status = "error" if server.error else "loading"
        return JSONResponse({"status": status, "message": server.error}, status_code=503)
    s = server.scheduler
    return JSONResponse(
        {
            "status": "ok",
            "active": s.active,
            "waiting": s.waiting,
            "max_batch": s.max_batch,
            "max_queue": s.max_queue,
            "max_context": s.max_context,
            **dataclasses.asdict(s.counters),
            "memory": server.served.memory,
        }
    )


async def metrics(request: HTTPRequest) -> Response:
    """Prometheus's text format (``glassformer.serving.metrics``)."""
    server = server_of(request)
    if server.scheduler is None:
        return Response("# loading\n", status_code=503, media_type="text/plain")
    metrics = server.scheduler.metrics
    return Response(metrics.render(), media_type=metrics.content_type)


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
    kind = "chat" if request.url.path.endswith("/chat/completions") else "completion"
    return body, server.check_model(body), read_sampling(body, kind)


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
    continue_final = read_continue_final_message(body, messages)
    tokenizer = server.served.tokenizer
    if not tokenizer.chat_template:
        raise APIError(400, f"{name} has no chat template; use /v1/completions with this model")
    try:
        ids = tokenizer.encode_chat(messages, continue_final_message=continue_final)
    except ValueError as error:
        raise APIError(400, str(error), param="messages") from None
    return await generate(request, "chat", name, ids, sampling, None)


async def generate(
    request: HTTPRequest, kind: str, name: str, ids: list[int], sampling: Sampling, default_max: int | None
) -> Response:
    """Submit the ``n`` choices of one request (choice i seeded ``seed + i``) and answer whole or streamed."""
    server = server_of(request)
    scheduler = server.scheduler
    limit = "context" if scheduler.max_sequence == scheduler.max_context else "key/value cache (--kv-blocks)"
    max_tokens = _max_tokens(kind, ids, sampling, default_max, scheduler.max_sequence, limit)
    box = mailbox(asyncio.get_running_loop())
    events: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()

    def deliver_to(index: int):
        return lambda event: box.post(events, (index, event))

    guides = [_guide(server, sampling) for _ in range(sampling.n)]  # each choice its own grammar state
    jobs = [
        Request(
            prompt=ids,
            max_tokens=max_tokens,
            deliver=deliver_to(i),
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            seed=None if sampling.seed is None else sampling.seed + i,
            stop=sampling.stop,
            timeout=server.config.request_timeout,
            presence_penalty=sampling.presence_penalty,
            frequency_penalty=sampling.frequency_penalty,
            logprobs=sampling.logprobs,
            guide=guides[i],
        )
        for i in range(sampling.n)
    ]
    try:
        for job in jobs:
            scheduler.submit(job)
    except ValueError as error:  # what the scheduler refuses (the checks above catch it first)
        scheduler.cancel(*jobs)
        raise APIError(400, str(error), param="max_tokens") from None
    except Overloaded as error:
        scheduler.cancel(*jobs)
        raise APIError(
            503, f"the server is busy ({error}); retry shortly", type="server_overloaded",
            code="overloaded", headers={"Retry-After": "1"},
        ) from None  # fmt: skip
    text_of = None if sampling.logprobs is None else server.token_text()
    reply = Reply(kind, name, sampling.n, text_of)
    if sampling.stream:
        return StreamingResponse(
            stream(request, jobs, events, reply, sampling.include_usage),
            media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )  # fmt: skip
    return await whole(request, jobs, events, reply)


def _guide(server: Server, sampling: Sampling):
    """Structured output's grammar state for one choice, or None; a schema it cannot use is a 400."""
    if not sampling.json:
        return None
    try:
        return server.grammars().json(sampling.schema)
    except ValueError as error:
        raise APIError(400, str(error), param="response_format") from None


def _max_tokens(
    kind: str, ids: list[int], sampling: Sampling, default_max: int | None, context: int, limit: str = "context"
) -> int:
    """``max_tokens`` as asked, or what the ``context`` positions leave (at most ``default_max``); a 400 past them
    (``limit`` names what bounds them)."""
    if len(ids) >= context:
        raise APIError(
            400, f"the prompt has {len(ids)} tokens and this server's {limit} is {context}; shorten it",
            code="context_length_exceeded", param="messages" if kind == "chat" else "prompt",
        )  # fmt: skip
    if sampling.max_tokens is None:
        return min(default_max or context, context - len(ids))
    if len(ids) + sampling.max_tokens > context:
        raise APIError(
            400, f"the prompt ({len(ids)} tokens) plus max_tokens ({sampling.max_tokens}) exceeds this server's "
            f"{limit} of {context} tokens; lower max_tokens or shorten the prompt", code="context_length_exceeded",
            param="max_tokens",
        )  # fmt: skip
    return sampling.max_tokens


async def whole(request: HTTPRequest, jobs: list[Request], events: asyncio.Queue, reply: Reply) -> Response:
    """Wait for every choice; the whole answer, or nothing if the client left (its jobs cancelled)."""
    scheduler = server_of(request).scheduler
    texts, entries, done = [[] for _ in jobs], [[] for _ in jobs], [None] * len(jobs)
    watcher = asyncio.create_task(_client_gone(request))
    try:
        while any(d is None for d in done):
            getter = asyncio.ensure_future(events.get())
            finished, _ = await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in finished:  # the client went away: nobody to answer
                getter.cancel()
                scheduler.cancel(*jobs)
                return Response(status_code=499)
            index, event = getter.result()
            if event.kind == "error":
                scheduler.cancel(*jobs)
                raise APIError(event.status, event.message, type="timeout" if event.status == 504 else "server_error")
            texts[index].append(event.text)
            entries[index] += event.logprobs
            if event.kind == "done":
                done[index] = event
        return JSONResponse(reply.whole(["".join(t) for t in texts], done, entries))
    finally:
        watcher.cancel()


async def stream(
    request: HTTPRequest, jobs: list[Request], events: asyncio.Queue, reply: Reply, include_usage: bool
) -> AsyncIterator[str]:
    """Server-sent events: each choice's chunks as its text settles, then ``[DONE]`` once every choice is done."""
    server = server_of(request)
    done: list[Event | None] = [None] * len(jobs)
    ended = False

    def cancel_all(_=None) -> None:
        if not ended:
            server.scheduler.cancel(*jobs)

    watcher = asyncio.create_task(_client_gone(request))
    watcher.add_done_callback(cancel_all)
    try:
        for first in reply.first_chunks():
            yield _sse(first)
        while any(d is None for d in done):
            index, event = await events.get()
            if event.kind == "error":
                ended = True
                server.scheduler.cancel(*jobs)
                yield _sse({"error": {"message": event.message, "type": "server_error", "code": event.status}})
                yield _sse("[DONE]")
                return
            if event.kind == "done":
                done[index] = event
            yield _sse(reply.chunk(index, event))
        ended = True
        if include_usage:
            yield _sse(reply.usage_chunk(done))
        yield _sse("[DONE]")
    finally:
        watcher.cancel()
        cancel_all()


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
