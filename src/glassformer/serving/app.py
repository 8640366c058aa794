"""``glassformer serve``: the OpenAI HTTP API on Starlette (run by uvicorn), over one ``Scheduler``.

    GET  /                      the chat page (self-contained; it calls the API below)
    GET  /health                503 while the model loads (or if loading failed), then 200 with the load
    GET  /metrics               counts: running, waiting, finished, cancelled, rejected, timed out, tokens
    GET  /v1/models             the served model (and the embedding model)
    POST /v1/completions        continue a prompt              "stream": true → server-sent events
    POST /v1/chat/completions   answer a conversation (the model's chat template), streamed the same way
    POST /v1/embeddings         sentence embeddings (when started with an embedding model)

A streamed answer is a series of ``data: {json chunk}`` events ending with ``data: [DONE]``. A client that goes
away (closes the stream, or drops a plain request) is cancelled: its slot is free before the next decoding step.
With an API key set, every ``/v1/*`` request needs ``Authorization: Bearer <key>`` (401 otherwise).
"""

from __future__ import annotations

import contextlib

from starlette.applications import Starlette
from starlette.requests import Request as HTTPRequest
from starlette.responses import Response
from starlette.routing import Route

from glassformer.serving import routes
from glassformer.serving.protocol import APIError
from glassformer.serving.state import Server


def create_app(server: Server) -> Starlette:
    """The ASGI app over ``server`` (its state). ``server.start_loading()`` runs when it starts; the scheduler stops
    when it shuts down."""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        server.start_loading()
        yield
        server.stop()

    table = [
        Route("/", routes.page),
        Route("/health", routes.health),
        Route("/metrics", routes.metrics),
        Route("/v1/models", routes.models),
        Route("/v1/completions", routes.completions, methods=["POST"]),
        Route("/v1/chat/completions", routes.chat_completions, methods=["POST"]),
        Route("/v1/embeddings", routes.embeddings, methods=["POST"]),
    ]
    app = Starlette(routes=table, lifespan=lifespan, exception_handlers={404: not_found, 405: wrong_method})
    app.state.server = server
    return app


async def not_found(request: HTTPRequest, exc) -> Response:
    return routes.error_response(APIError(404, f"no route {request.method} {request.url.path}", code="not_found"))


async def wrong_method(request: HTTPRequest, exc) -> Response:
    return routes.error_response(APIError(405, f"{request.method} is not allowed on {request.url.path}"))
