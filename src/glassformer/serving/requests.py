"""What the scheduler works on: a ``Request`` (a prompt, how to continue it, and the scheduler's bookkeeping of it),
the ``Event``s it is told (text, done, error), ``Overloaded`` when the queue is full, and the server's ``Counters``;
and how events cross from the scheduler's thread to the HTTP event loop: a ``Mailbox`` per loop, woken once for a
decoding step's events (``deliveries_held``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
import weakref
from collections.abc import Callable, Iterator

import torch

from glassformer.generation.config import GenerationConfig
from glassformer.generation.sampler import Sampling
from glassformer.generation.text_stream import TextStream


class Overloaded(Exception):
    """The waiting queue is full: the caller should answer 503 and ask the client to retry later."""


@dataclasses.dataclass
class Event:
    """What a request receives: ``text`` (a settled piece), ``done`` (with ``finish_reason`` ``stop`` or
    ``length`` and the token counts) or ``error`` (with an HTTP ``status`` and a one-line ``message``)."""

    kind: str
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    status: int = 0
    message: str = ""
    # with logprobs asked: per token this event settles, (token id, its log-probability, [(id, log-probability)
    # of the most likely tokens]); those of tokens that settle no text (a stop string, the end) come with "done"
    logprobs: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass(eq=False)
class Request:
    """One generation: the prompt's token ids and how to continue it (``temperature`` 0: greedy; OpenAI's presence
    and frequency penalties; ``logprobs``: None, or how many of the most likely tokens to report with each one)."""

    prompt: list[int]
    max_tokens: int
    deliver: Callable[[Event], None]
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    timeout: float | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None
    guide: object | None = None  # structured output: its grammar's state (glassformer.generation.structured)
    # the scheduler's bookkeeping
    prefilled: int = 0  # tokens of ``reading`` already in its slot (chunked prefill)
    reading: list[int] = dataclasses.field(default_factory=list)  # what its slot is filled with on admission: the
    # prompt, and after a preemption the prompt and the tokens generated but the pending last one
    admitted: int = 0  # the order of admission (preemption takes the latest)
    tokens: list[int] = dataclasses.field(default_factory=list)
    slot: int | None = None
    cancelled: bool = False
    deadline: float = float("inf")
    text: TextStream | None = None
    sampling: Sampling | None = None  # this request's row of the batched sampler
    counts: torch.Tensor | None = None  # (1, vocab): its tokens counted, for the presence / frequency penalties
    pending: list = dataclasses.field(default_factory=list)  # logprobs not yet delivered
    submitted: float = 0.0
    last_token_at: float | None = None
    drafter: object | None = None  # --prompt-lookup: its drafter's state (glassformer.serving.speculation)

    def prepare(self, tokenizer, vocab_size: int, device: torch.device) -> None:
        """Ready to be queued: its text stream (stop strings), deadline, row of the batched sampler (with a generator
        of its own: its draws never depend on the other requests) and, with penalties, its token counts."""
        self.text = TextStream(tokenizer, self.stop)
        self.submitted = time.monotonic()
        self.deadline = self.submitted + self.timeout if self.timeout else float("inf")
        config = GenerationConfig(do_sample=self.temperature > 0, temperature=self.temperature or 1.0,
                                  top_p=self.top_p, top_k=self.top_k, seed=self.seed,
                                  presence_penalty=self.presence_penalty,
                                  frequency_penalty=self.frequency_penalty)  # fmt: skip
        generator = None
        if config.do_sample:
            generator = torch.Generator(device=device)
            if self.seed is not None:
                generator.manual_seed(self.seed)
            else:
                generator.seed()
        self.sampling = Sampling.of([config], [generator], device=device)
        self.sampling.guides = None if self.guide is None else [self.guide]
        if self.sampling.counted:
            self.counts = torch.zeros(1, vocab_size, device=device)

    def take_pending(self) -> list:
        """The logprobs not yet delivered, handed over."""
        pending, self.pending = self.pending, []
        return pending


@dataclasses.dataclass
class Counters:
    finished: int = 0
    cancelled: int = 0
    timed_out: int = 0
    rejected: int = 0
    failed: int = 0
    steps: int = 0
    generated_tokens: int = 0


class Mailbox:
    """Events from the scheduler's thread to one event loop, handed over in batches. Waking the loop
    (``call_soon_threadsafe``: a write to its self-pipe, and the loop's thread then wanting the GIL) is done for the
    first event posted since the loop last emptied the box — or, while ``deliveries_held``, once at its end: at 8
    streaming clients one hand-over per decoding step, not one per token. The events keep their order."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.lock, self.items = loop, threading.Lock(), []

    def post(self, queue: asyncio.Queue, item) -> None:
        with self.lock:
            self.items.append((queue, item))
            first = len(self.items) == 1
        held = getattr(_held, "boxes", None)
        if held is not None:
            held.add(self)
        elif first:
            self.wake()

    def wake(self) -> None:
        self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self.lock:
            items, self.items = self.items, []
        for queue, item in items:
            queue.put_nowait(item)


_mailboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Mailbox] = weakref.WeakKeyDictionary()
_held = threading.local()


def mailbox(loop: asyncio.AbstractEventLoop) -> Mailbox:
    """The event loop's mailbox (one per loop, made on first use, from the loop's own thread)."""
    box = _mailboxes.get(loop)
    if box is None:
        box = _mailboxes[loop] = Mailbox(loop)
    return box


@contextlib.contextmanager
def deliveries_held() -> Iterator[None]:
    """Within it, the mailboxes this thread posts to wake their loops once, when it ends (the scheduler holds a
    decoding step's events this way)."""
    _held.boxes = set()
    try:
        yield
    finally:
        boxes, _held.boxes = _held.boxes, None
        for box in boxes:
            box.wake()
