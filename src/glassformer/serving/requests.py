"""What the scheduler works on: a ``Request`` (a prompt, how to continue it, and the scheduler's bookkeeping of it),
the ``Event``s it is told (text, done, error), ``Overloaded`` when the queue is full, and the server's ``Counters``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

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
    prefilled: int = 0  # prompt tokens already in its slot (chunked prefill)
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


@dataclasses.dataclass
class Counters:
    finished: int = 0
    cancelled: int = 0
    timed_out: int = 0
    rejected: int = 0
    failed: int = 0
    steps: int = 0
    generated_tokens: int = 0
