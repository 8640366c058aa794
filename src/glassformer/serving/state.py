"""The state behind the server's routes: how it runs (``ServeConfig``), and what is loaded (``Server``: the model, its
scheduler, the API key), with the checks every ``/v1`` route makes first."""

from __future__ import annotations

import dataclasses
import secrets
import threading
from collections.abc import Callable

from starlette.requests import Request as HTTPRequest

from glassformer.generation.structured import Grammars
from glassformer.serving.loading import Served
from glassformer.serving.logprobs import TokenText
from glassformer.serving.protocol import APIError
from glassformer.serving.scheduler import Scheduler


@dataclasses.dataclass
class ServeConfig:
    """How the server runs: batching and memory (``max_batch`` slots of ``max_context`` positions), the waiting
    queue, a per-request timeout in seconds, an optional API key, ``batch_invariant`` (each request decoded
    as a batch of its own: its answer bit for bit the same whatever else runs) and ``prefill_chunk`` (prompt tokens
    read per step: a long prompt stalls the running requests by one chunk at a time) and ``prefix_cache_tokens``
    (prompt tokens whose keys and values are kept for later prompts that start alike; 0: none) and ``kv_blocks``
    (the paged cache's blocks of 32 positions; None: enough for every slot's whole context and the prefix cache)."""

    max_batch: int = 8
    max_context: int = 2048
    max_queue: int = 64
    request_timeout: float = 600.0
    api_key: str | None = None
    batch_invariant: bool = False
    prefill_chunk: int = 512
    prefix_cache_tokens: int = 2048
    prompt_lookup: int = 0  # speculative decoding: drafts of this many tokens while a request runs alone; 0: off
    kv_blocks: int | None = None


class Server:
    """The state behind the routes: what is loaded, the scheduler, the API key. ``load`` (a function returning a
    ``Served``) runs on a thread when the app starts, so ``/health`` answers 503 until it is done."""

    def __init__(
        self, load: Callable[[], Served], config: ServeConfig, on_ready: Callable[[Server], None] | None = None
    ):
        self.load, self.config, self.on_ready = load, config, on_ready
        self.served: Served | None = None
        self.scheduler: Scheduler | None = None
        self.error: str | None = None
        self.loaded = threading.Event()
        self.encoder_lock = threading.Lock()
        self._token_text: TokenText | None = None
        self._grammars: Grammars | None = None

    def start_loading(self) -> None:
        threading.Thread(target=self._load, name="glassformer-load", daemon=True).start()

    def _load(self) -> None:
        try:
            served = self.load()
            c = self.config
            scheduler = Scheduler(
                served.model,
                served.tokenizer,
                c.max_batch,
                c.max_context,
                c.max_queue,
                served.eos_token_ids,
                c.batch_invariant,
                c.prefill_chunk,
                c.prefix_cache_tokens,
                c.prompt_lookup,
                c.kv_blocks,
            )
            scheduler.start()
            self.served, self.scheduler = served, scheduler
        except Exception as error:  # noqa: BLE001 — reported by /health and the CLI
            self.error = f"{type(error).__name__}: {error}"
        self.loaded.set()
        if self.on_ready is not None:
            self.on_ready(self)

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()

    def grammars(self) -> Grammars:
        """llguidance's view of the tokenizer, for structured output (made on first use, ~0.3 s)."""
        if self._grammars is None:
            served = self.served
            eos = sorted(self.scheduler.eos_token_ids) or [served.model.config.eos_token_id]
            self._grammars = Grammars(served.tokenizer, served.model.config.vocab_size, eos)
        return self._grammars

    def token_text(self) -> TokenText:
        """Each token's text and bytes, for logprobs (one table for the server's life)."""
        if self._token_text is None:
            self._token_text = TokenText(self.served.tokenizer)
        return self._token_text

    # --- checks every /v1 route makes ------------------------------------------------------------------------------

    def check(self, request: HTTPRequest) -> None:
        key = self.config.api_key
        if key:
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {key}".encode()):
                raise APIError(401, "a valid API key is needed: Authorization: Bearer <key>", code="invalid_api_key")
        if self.scheduler is None:
            message = f"the model failed to load: {self.error}" if self.error else "the model is still loading"
            raise APIError(503, message, type="server_not_ready", headers={"Retry-After": "5"})

    def check_model(self, body: dict, embedding: bool = False) -> str:
        served = self.served
        name = served.embedding_name if embedding else served.name
        if embedding and served.encoder is None:
            raise APIError(404, "this server has no embedding model; start it with --embedding-model minilm")
        asked = body.get("model")
        if asked is not None and asked != name:
            raise APIError(
                404,
                f"model {asked!r} is not served here; this server serves {name!r}",
                code="model_not_found",
                param="model",
            )
        return name
