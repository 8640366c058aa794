"""Continuous batching: one thread owns the model and decodes every running request together.

    waiting (bounded: --max-queue)  ──admit──▶  reading its prompt  ──▶  running (≤ --max-batch slots)  ──▶  freed
                                      one --prefill-chunk       one decoding step for all
                                      per step (prompts at one  running rows, then each row
                                      offset together; fused:   picks its own next token
                                      rows of the decoding
                                      step), then the first
                                      token

Between two decoding steps the loop admits waiting requests into free slots of a ``SlotCache`` (a prompt that
starts with blocks another prompt had gets those blocks, shared, from the ``PrefixCache``), runs the next
chunk of ``prefill_chunk`` prompt tokens of the first request still reading its prompt — with the prompts at the
same offset that fit in the chunk beside it, right-padded in the same pass, so prompts arriving together get their
first tokens together (chunked prefill: a long prompt never stalls the running requests for more than one chunk,
and a short one is read whole; ``glassformer.serving.prompt_reading``) — or, where the decoding step is fused and
requests decode, as more rows of that step (``DecodingStep.mixed``: the prompts' chunks ride in it, up to the step's
row limit) —, drops the requests cancelled (a client gone)
or past their deadline, and runs one step for all the running ones: their slots as one batch, each row masked to
its own positions, so requests of any lengths decode together and leave as soon as they are done. Every request keeps
its own sampling settings (temperature, top-k, top-p, seed: a row of the batched sampler,
``glassformer.generation.sampler``, which picks every row's token in one pass) and stop conditions (end of
sequence, stop strings, ``max_tokens``, the context). With ``batch_invariant`` each running request is decoded
as a batch of its own, so its answer never depends on what else runs (bit for bit), at the cost of reading the
weights once per request.
Memory is fixed when the server starts: a pool of ``kv_blocks`` blocks of 32 positions (default: enough for
``max_batch`` slots of ``max_context`` positions, and the prefix cache's blocks), which sequences take as they grow.
A request that could never fit the pool alone is refused at ``submit``; beside others, one is admitted only when the
pool has room for what it reads and a block more for each request holding a slot (admission control: it waits in the
queue rather than take blocks that the next steps would take back). When the pool runs out, blocks that only the
prefix cache holds are given back first; then a prompt waits for blocks while others decode, and a decoding step
that lacks a block preempts the latest admitted request: its blocks are freed and it goes back to the head of the
queue, to read its prompt and the tokens it had generated again when blocks are free (recomputation, as vLLM does;
what it sent stays sent, and its sampler's state goes on where it was).

A request (``glassformer.serving.requests``) sees its output as ``Event``s through the ``deliver`` function it came
with (called on the scheduler's thread; the HTTP layer hands them to its event loop).
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import nullcontext

import torch

from glassformer import runtime
from glassformer.generation import sampler
from glassformer.generation.sampler import Sampling
from glassformer.generation.step import choose_step
from glassformer.nn.linear import packed_weights
from glassformer.nn.slot_cache import DEFAULT_BLOCK, default_blocks
from glassformer.serving.metrics import Metrics
from glassformer.serving.prefix_cache import PrefixCache
from glassformer.serving.prompt_reading import PromptReading
from glassformer.serving.requests import Counters, Event, Overloaded, Request, deliveries_held
from glassformer.serving.speculation import Speculation, check_speculation
from glassformer.tokenizer import Tokenizer


class Scheduler(PromptReading):
    """Owns ``model`` on a thread of its own; ``submit`` requests from any thread, ``cancel`` them, read
    ``active`` / ``waiting`` / ``counters``. ``max_context`` positions per slot (prompt + answer) in a pool of
    ``kv_blocks`` blocks of ``kv_block`` positions (None: every slot's whole context and the prefix cache's); prompts
    are read ``prefill_chunk`` tokens per step."""

    def __init__(
        self,
        model,
        tokenizer: Tokenizer,
        max_batch: int = 8,
        max_context: int = 2048,
        max_queue: int = 64,
        eos_token_ids: tuple[int, ...] = (),
        batch_invariant: bool = False,
        prefill_chunk: int = 512,
        prefix_cache_tokens: int = 0,
        prompt_lookup: int = 0,
        kv_blocks: int | None = None,
        kv_block: int = DEFAULT_BLOCK,
    ):
        if prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be at least 1 token, got {prefill_chunk}")
        check_speculation(prompt_lookup, batch_invariant)
        self.model = model
        self.prefill_chunk = prefill_chunk
        self.batch_invariant = batch_invariant
        self.tokenizer = tokenizer
        self.max_batch, self.max_queue = max_batch, max_queue
        self.max_context = min(max_context, model.config.max_seq_length)
        self.eos_token_ids = frozenset(eos_token_ids)
        self.device = runtime.module_device(model)
        # prompts' blocks kept for later prompts that start alike; off with batch_invariant, where an answer may
        # not depend on what ran before either
        prefix_blocks = 0 if batch_invariant else prefix_cache_tokens // kv_block
        if kv_blocks is None:
            kv_blocks = default_blocks(max_batch, self.max_context, prefix_blocks, kv_block)
        self.cache = model.make_slot_cache(max_batch, self.max_context, blocks=kv_blocks, block=kv_block)
        self.prefix = PrefixCache(self.cache, prefix_blocks)
        self.admissions = 0
        self.step = choose_step(model)  # the modules, or the fused CPU step (glassformer.generation.step)
        self.free_slots = list(range(max_batch))  # a heap: the lowest free slot first keeps the batch compact
        self.running: dict[int, Request] = {}  # slot -> a request that decodes
        self.prefilling: deque[Request] = deque()  # admitted, still reading their prompts, first come first
        self.queue: deque[Request] = deque()
        self.counters = Counters()
        self.step_started: float | None = None  # when the decoding step under way began
        self.metrics = Metrics(lambda: self.active, lambda: self.waiting, lambda: self.prefix.blocks,
                               lambda: self.cache.used_blocks, lambda: len(self.cache.free_blocks))  # fmt: skip
        # --prompt-lookup: a request running alone checks drafts of that many tokens a step
        self.speculation = Speculation(self.step, self.cache, prompt_lookup, self.metrics) if prompt_lookup else None
        self.condition = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, name="glassformer-scheduler", daemon=True)

    # --- the other threads' side ---------------------------------------------------------------------------------

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        with self.condition:
            self.stopping = True
            self.condition.notify()
        self.thread.join(timeout=30)

    def submit(self, request: Request) -> None:
        """Queue ``request``; ``Overloaded`` if ``max_queue`` requests already wait."""
        if not request.prompt:
            raise ValueError("the prompt is empty")
        if len(request.prompt) + request.max_tokens > self.max_context:
            raise ValueError(
                f"the prompt ({len(request.prompt)} tokens) and max_tokens ({request.max_tokens}) exceed the "
                f"context of {self.max_context} tokens"
            )
        if len(request.prompt) + request.max_tokens > self.max_sequence:
            needed = self.cache.blocks_for(len(request.prompt) + request.max_tokens)
            raise ValueError(
                f"the prompt ({len(request.prompt)} tokens) and max_tokens ({request.max_tokens}) need {needed} "
                f"key/value blocks and the server has {self.cache.blocks} (--kv-blocks); ask for fewer tokens"
            )
        request.prepare(self.tokenizer, self.model.config.vocab_size, self.device)
        with self.condition:
            if len(self.queue) >= self.max_queue:
                self._count("rejected")
                raise Overloaded(f"{len(self.queue)} requests are waiting already (--max-queue {self.max_queue})")
            self.queue.append(request)
            self.condition.notify()

    def cancel(self, *requests: Request) -> None:
        """The client is gone: the requests' slots are freed before the next decoding step."""
        with self.condition:
            for request in requests:
                request.cancelled = True
            self.condition.notify()

    @property
    def max_sequence(self) -> int:
        """The most positions one request may take (prompt + answer): the context, or fewer where the pool of blocks
        holds fewer (``--kv-blocks``)."""
        return min(self.max_context, self.cache.blocks * self.cache.block)

    @property
    def active(self) -> int:
        return len(self.running) + len(self.prefilling)

    @property
    def waiting(self) -> int:
        return len(self.queue)

    # --- the scheduler's thread ---------------------------------------------------------------------------------

    def _loop(self) -> None:
        pack = self.device.type == "cpu"
        with torch.inference_mode(), packed_weights(self.model) if pack else nullcontext():
            while True:
                with self.condition:
                    while not self.stopping and not self.queue and not self.running and not self.prefilling:
                        self.condition.wait()
                    if self.stopping:
                        break
                    while self.queue and self.free_slots and (self.queue[0].cancelled or self._has_room(self.queue[0])):
                        request = self.queue.popleft()
                        if not request.cancelled:
                            request.slot = heapq.heappop(self.free_slots)
                            self._admit(request)
                        else:
                            self._count("cancelled")
                self._expire()
                mixing = self._mixes()
                if self.prefilling and not mixing:  # the next chunk of the first prompts (and those with the same)
                    batch = self._prefill_batch()
                    self._guarded([r for b in batch for r in self._same_prompt(b)], self._prefill, batch)
                self._expire()
                if self.running:  # mixing: with the prompts' next chunks riding in the step
                    self._guarded([*self.running.values(), *(self.prefilling if mixing else ())], self._decode_step,
                                  mixing)  # fmt: skip
        for request in [*self.running.values(), *self.prefilling, *self.queue]:
            request.deliver(Event("error", status=503, message="the server is shutting down"))

    def _guarded(self, requests: list[Request], step: Callable, *args) -> None:
        """Run ``step``; if it fails, the requests in it end with an error and the server goes on."""
        try:
            step(*args)
        except Exception as error:  # noqa: BLE001 — one bad step must not stop the server
            message = f"generation failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            for request in requests:
                if request.slot is not None:
                    self._count("failed")
                    self._release(request)
                    request.deliver(Event("error", status=500, message=message[:300]))

    def _expire(self) -> None:
        """Free the slots of cancelled requests and end the ones past their deadline (waiting ones too)."""
        now = time.monotonic()
        for request in [*self.running.values(), *self.prefilling]:
            if request.cancelled:
                self._count("cancelled")
                self._release(request)
            elif now > request.deadline:
                self._time_out(request)
        with self.condition:
            late = [r for r in self.queue if now > r.deadline or r.cancelled]
            for request in late:
                self.queue.remove(request)
        for request in late:
            if request.cancelled:
                self._count("cancelled")
            else:
                self._time_out(request)

    def _time_out(self, request: Request) -> None:
        self._count("timed_out")
        self._release(request)
        message = f"the request took longer than its timeout of {request.timeout:g} s"
        request.deliver(Event("error", status=504, message=message))

    def _release(self, request: Request) -> None:
        if request.slot is not None:
            self.running.pop(request.slot, None)
            if request in self.prefilling:
                self.prefilling.remove(request)
            self.cache.free(request.slot)
            heapq.heappush(self.free_slots, request.slot)
            request.slot = None

    def _decode_step(self, mixing: bool = False) -> None:
        """One token for every running request: their slots as one batch — or, ``batch_invariant``, each slot as a
        batch of its own; ``mixing``: with the next chunks of prompts being read as more rows of the same step
        (``_riders``). Each running request's next position gets its block first, the earliest admitted first
        (preempting the latest)."""
        for request in sorted(self.running.values(), key=lambda r: r.admitted):
            if request.slot is not None:
                self._reserve(request, self.cache.lengths[request.slot] + 1, wait=False)
        if not self.running:
            return
        self.step_started = time.perf_counter()
        if self.speculation is not None and len(self.running) == 1:
            (request,) = self.running.values()
            checked = self.speculation.tokens(request, self.max_context) if self.speculation.takes(request) else None
            if checked is not None:
                return self._emit_checked(request, checked)
        if self.batch_invariant:
            return self._decode_each()
        requests = [self.running[slot] for slot in sorted(self.running)]
        riders = self._riders(len(requests)) if mixing else []
        if riders:
            return self._mixed_step(requests, riders)
        view = self.cache.view([r.slot for r in requests])
        ids = torch.tensor([[r.tokens[-1]] for r in requests], device=self.device)
        logits = self.step(ids, view.attention_mask(1), view)  # (rows, vocab)
        self.counters.steps += 1
        self.metrics.steps.inc()
        self._choose(requests, logits)

    def _decode_each(self) -> None:
        """``--batch-invariant``: every running request's step as a batch of one row, the same computation whatever
        else is running — its tokens and logprobs are bit for bit those it gets alone — at the price of reading the
        weights once per request instead of once per step."""
        requests = [self.running[slot] for slot in sorted(self.running)]
        rows = []
        for request in requests:
            view = self.cache.view([request.slot])
            ids = torch.tensor([[request.tokens[-1]]], device=self.device)
            rows.append(self.step(ids, view.attention_mask(1), view))
        self.counters.steps += 1
        self.metrics.steps.inc()
        self._choose(requests, torch.cat(rows))

    def _choose(self, requests: list[Request], logits: torch.Tensor) -> None:
        """Every request's next token from its row of ``logits`` ``(rows, vocab)``, by the batched sampler (and
        the log-probabilities of the requests that asked for them)."""
        sampling = Sampling.stack([r.sampling for r in requests])
        counts = None
        if sampling.counted:  # the presence / frequency penalties; rows without them count nothing
            zeros = logits.new_zeros(1, logits.size(-1))
            counts = torch.cat([r.counts if r.counts is not None else zeros for r in requests])
        tokens = sampler.choose(sampler.scores(logits, None, sampling, counts), sampling)  # the step's read-back
        asking = [i for i, r in enumerate(requests) if r.logprobs is not None]
        reported = {}
        if asking:
            top = max(requests[i].logprobs for i in asking)
            found = sampler.logprobs(logits[asking], [tokens[i] for i in asking], top)
            reported = {i: (tokens[i], lp, list(zip(ids, lps, strict=True))[: requests[i].logprobs])
                        for i, (lp, ids, lps) in zip(asking, found, strict=True)}  # fmt: skip
        chosen = time.perf_counter()
        with deliveries_held():  # the step's events cross to the HTTP loop in one hand-over
            for i, (request, token) in enumerate(zip(requests, tokens, strict=True)):
                self._emit(request, token, reported.get(i))
        if self.step_started is not None:  # a decoding step (not a prompt's last chunk): its two parts' times
            self.metrics.step_seconds.observe(chosen - self.step_started)
            self.metrics.emit_seconds.observe(time.perf_counter() - chosen)
            self.step_started = None

    def _emit_checked(self, request: Request, tokens: list[int]) -> None:
        """The tokens of one speculative pass, in order, until the request ends."""
        chosen = time.perf_counter()
        self.counters.steps += 1
        self.metrics.steps.inc()
        with deliveries_held():
            for token in tokens:
                self._emit(request, token)
                if request.slot is None:  # finished: what follows is dropped
                    break
        self.metrics.step_seconds.observe(chosen - self.step_started)
        self.metrics.emit_seconds.observe(time.perf_counter() - chosen)
        self.step_started = None

    def _emit(self, request: Request, token: int, logprob: tuple | None = None) -> None:
        """Take the request's next token, send the text it settles, and end the request if it is done."""
        now = time.monotonic()
        if request.last_token_at is None:
            self.metrics.ttft.observe(now - request.submitted)
        else:
            self.metrics.inter_token.observe(now - request.last_token_at)
        request.last_token_at = now
        request.tokens.append(token)
        if request.guide is not None:
            request.guide.advance(token)
        if request.counts is not None:
            request.counts[0, token] += 1
        if logprob is not None:
            request.pending.append(logprob)
        self.counters.generated_tokens += 1
        self.metrics.generated_tokens.inc()
        finish = None
        if token in self.eos_token_ids:
            finish = "stop"
        else:
            piece, stopped = request.text.push(token)
            if piece:
                request.deliver(Event("text", text=piece, logprobs=request.take_pending()))
            if stopped:
                finish = "stop"
        if finish is None and (
            len(request.tokens) >= request.max_tokens or len(request.prompt) + len(request.tokens) >= self.max_context
        ):
            finish = "length"
        if finish is not None:
            rest = request.text.finish() if finish == "length" or token in self.eos_token_ids else ""
            if rest:
                request.deliver(Event("text", text=rest, logprobs=request.take_pending()))
            self._count("finished")
            self._release(request)
            request.deliver(
                Event(
                    "done",
                    finish_reason=finish,
                    prompt_tokens=len(request.prompt),
                    completion_tokens=len(request.tokens),
                    logprobs=request.take_pending(),
                )
            )

    def _count(self, outcome: str) -> None:
        setattr(self.counters, outcome, getattr(self.counters, outcome) + 1)
        self.metrics.requests.labels(outcome).inc()
