"""How the scheduler (``glassformer.serving.scheduler``) reads prompts into its paged cache, on its thread:

    admit      a request gets a slot, which starts with the prefix cache's blocks of what it reads (its prompt; after a
               preemption, its prompt and the tokens it had generated but the pending last one) — when the pool
               has room for it: the blocks it reads into and one more for each request already holding a slot
               (admission control: beside running requests, a request waits in the queue rather than taking blocks
               that the next steps would take back by preemption)
    batch      the prompts to read in this step: the first still reading, and the others at the same offset in what
               they read (right-padded, ``prefill_chunk`` tokens in all); with ``batch_invariant`` the first alone
    read       their next chunks in one forward pass; a prompt read whole keeps its blocks in the prefix cache, joins
               the running requests and picks its first token — and so do the waiting requests with the same prompt
               (``n`` > 1), whose slots get its blocks instead of reading it again
    ride       or, with the fused step (``DecodingStep.row_limit``) while requests decode, the prompts' next chunks
               are more rows of the decoding step itself (``_riders``, ``_mixed_step``): first come first, at any
               offsets, ``prefill_chunk`` tokens in all and no more than fill the step's row limit — chunked prefill
               inside the step, as vLLM schedules it: no pass of their own, so the running requests wait for no more
               than one such step
    reserve    blocks before every write; where the pool lacks them a prompt waits while others decode, and a
               decoding step preempts the latest admitted request (back to the head of the queue, read again later)

``PromptReading`` is a part of ``Scheduler`` (a base class): it uses the scheduler's ``cache``, ``prefix``,
``prefilling``, ``running``, ``queue``, ``condition``, ``metrics``, ``model``, ``step``, ``speculation``, ``device``,
``prefill_chunk``, ``batch_invariant``, ``admissions``, ``counters``, ``_release`` and ``_choose``.
"""

from __future__ import annotations

import torch

from glassformer.nn.slot_cache import OutOfBlocks
from glassformer.serving.requests import Request

MIN_RIDING = 16  # prompt tokens a mixed step takes however many rows decode


class PromptReading:
    """The scheduler's prompt reading and block keeping (module docstring)."""

    def _has_room(self, request: Request) -> bool:
        """Whether the pool can take ``request`` now (admission control): blocks for what it reads and its first new
        position, besides those the prefix cache gives it, and still one for the next positions of each request
        that holds a slot, and the rest of the prompts being read. With no other request it always can (``submit``
        refused what the pool could not hold alone)."""
        holders = [*self.running.values(), *self.prefilling]
        if not holders:
            return True
        reading = request.prompt + request.tokens[:-1] if request.tokens else request.prompt
        hits = self.prefix.match(reading, touch=False)
        need = self.cache.blocks_for(len(reading) + 1) - len(hits)
        for other in self.prefilling:  # what the prompts being read still need
            need += max(self.cache.blocks_for(len(other.reading)) - len(self.cache.tables[other.slot]), 0)
        spare = len(self.cache.free_blocks) + len(self.prefix.idle() - set(hits))
        return spare >= need + len(holders)

    def _admit(self, request: Request) -> None:
        """The request's slot starts with the cached blocks of what it has to read (its prompt; after a preemption,
        its prompt and the tokens it generated but the last); it reads the rest."""
        resumed = bool(request.tokens)
        request.reading = request.prompt + request.tokens[:-1] if resumed else request.prompt
        request.prefilled = self.prefix.restore(request.slot, self.prefix.match(request.reading))
        if not resumed:  # a resumed request keeps its place: preemption takes the latest arrivals
            self.admissions += 1
            request.admitted = self.admissions
            self.metrics.prompt_tokens.inc(len(request.prompt))
            self.metrics.prefix_hit_tokens.inc(request.prefilled)
        self.prefilling.append(request)

    def _same_prompt(self, head: Request) -> list[Request]:
        """The requests reading the same new prompt as ``head`` (``n`` > 1 choices), ``head`` first."""
        if head.tokens:  # resumed after a preemption: its own reading
            return [head]
        return [head, *(r for r in self.prefilling if r is not head and not r.tokens and r.prompt == head.prompt)]

    def _prefill_batch(self) -> list[Request]:
        """The prompts read in this step: the first one still reading and, unless ``batch_invariant``, the others at
        the same offset in what they read (right-padded to the longest chunk, ``prefill_chunk`` tokens in all,
        padding counted); a prompt that another one in the batch has too waits to share its blocks."""
        head, batch = self.prefilling[0], [self.prefilling[0]]
        width = min(self.prefill_chunk, len(head.reading) - head.prefilled)
        for request in list(self.prefilling)[1:] if not self.batch_invariant else []:
            n = min(self.prefill_chunk, len(request.reading) - request.prefilled)
            shares = not request.tokens and any(not r.tokens and r.prompt == request.prompt for r in batch)
            if (
                request.prefilled == head.prefilled
                and not shares
                and (len(batch) + 1) * max(width, n) <= self.prefill_chunk
            ):
                batch.append(request)
                width = max(width, n)
        return batch

    def _prefill(self, batch: list[Request]) -> None:
        """Run the next chunk (up to ``prefill_chunk`` tokens) of what each request of ``batch`` reads into its slot,
        the rows in one forward pass; after its last chunk a request picks its first token (a resumed one has it)
        and joins the running ones. A first request whose blocks the pool lacks waits while others decode (with
        none decoding, the latest admitted prompts give theirs); the others join only where blocks are free."""
        self.step_started = None  # not a decoding step
        chunks = [r.reading[r.prefilled : r.prefilled + self.prefill_chunk] for r in batch]
        width = max(len(chunk) for chunk in chunks)
        if not self._reserve(batch[0], batch[0].prefilled + width, wait=bool(self.running)):
            return
        joined = [0]
        for i, request in enumerate(batch[1:], 1):
            try:
                self.cache.reserve(request.slot, request.prefilled + width)
                joined.append(i)
            except OutOfBlocks:  # it reads later
                pass
        batch, chunks = [batch[i] for i in joined], [chunks[i] for i in joined]
        sizes = [len(chunk) for chunk in chunks]
        ids = torch.tensor([chunk + [0] * (width - len(chunk)) for chunk in chunks], device=self.device)
        view = self.cache.view([r.slot for r in batch], sizes=sizes)
        if len(batch) == 1:
            logits = self.model(ids, cache=view, last_token_only=True)[:, -1]
        else:  # right-padded rows: each one's logits at its last real token
            logits = self.model(ids, attention_mask=view.attention_mask(width), cache=view,
                                logits_at=torch.tensor(sizes) - 1)[:, -1]  # fmt: skip
        chosen, rows = [], []
        for row, (request, size) in enumerate(zip(batch, sizes, strict=True)):
            request.prefilled += size
            if request.prefilled == len(request.reading):
                ready = self._read(request)
                chosen += ready
                rows += [row] * len(ready)
        if chosen:
            self._choose(chosen, logits[rows].float())

    def _mixes(self) -> bool:
        """Whether prompts are read inside this decoding step (``_riders``) rather than in a pass of their own:
        requests decode, prompts wait to be read, the step is fused (it takes rows of any slots and positions,
        ``DecodingStep.row_limit``), answers need not be batch-invariant, and no speculative step comes."""
        return (
            bool(self.running) and bool(self.prefilling) and self.step.row_limit > 0 and not self.batch_invariant
            and not (self.speculation is not None and len(self.running) == 1)
        )  # fmt: skip

    def _riders(self, decoding: int) -> list[tuple[Request, int]]:
        """The prompts whose next chunks ride in this decoding step beside its ``decoding`` rows, with their sizes:
        first come first, ``prefill_chunk`` tokens in all and no more than fill the step's row limit (at least
        ``MIN_RIDING``); a prompt that another one in it has too waits to share its blocks, and where the pool lacks
        blocks for a chunk, that prompt and the ones after it wait."""
        budget = min(self.prefill_chunk, max(self.step.row_limit - decoding, MIN_RIDING))
        riders: list[tuple[Request, int]] = []
        for request in list(self.prefilling):
            if budget == 0:
                break
            if not request.tokens and any(not r.tokens and r.prompt == request.prompt for r, _ in riders):
                continue
            n = min(budget, len(request.reading) - request.prefilled)
            try:
                self.cache.reserve(request.slot, request.prefilled + n)
            except OutOfBlocks:
                break
            riders.append((request, n))
            budget -= n
        return riders

    def _mixed_step(self, requests: list[Request], riders: list[tuple[Request, int]]) -> None:
        """One step of the running ``requests``' next tokens and the ``riders``' prompt chunks as rows of one pass
        (``DecodingStep.mixed``): every running request picks its next token, and a prompt read whole joins them
        with its first (``_read``)."""
        parts = [(r.slot, [r.tokens[-1]]) for r in requests]
        parts += [(r.slot, r.reading[r.prefilled : r.prefilled + n]) for r, n in riders]
        logits = self.step.mixed(parts, self.cache)  # (parts, vocab)
        self.counters.steps += 1
        self.metrics.steps.inc()
        self.metrics.riding_prompt_tokens.inc(sum(n for _, n in riders))
        chosen, rows = list(requests), list(range(len(requests)))
        for row, (request, n) in enumerate(riders, len(requests)):
            request.prefilled += n
            if request.prefilled == len(request.reading):
                ready = self._read(request)
                chosen += ready
                rows += [row] * len(ready)
        self._choose(chosen, logits[rows])

    def _read(self, request: Request) -> list[Request]:
        """The request has read its prompt: it keeps its blocks in the prefix cache and joins the running ones, and
        so do the waiting requests with the same prompt (n > 1 choices), their slots given its blocks; those that
        pick a first token now, from its logits (none for a resumed request: its pending token is the next
        step's input)."""
        self.prefix.store(request.slot, request.reading)
        self.prefilling.remove(request)
        self.running[request.slot] = request
        if request.tokens:
            return []
        same = []
        for other in self._same_prompt(request)[1:]:
            self.cache.free(other.slot)
            try:
                self.cache.copy(request.slot, other.slot, len(request.prompt))
            except OutOfBlocks:  # no block for the copy of the last one: it reads the prompt itself, later
                self.cache.free(other.slot)
                other.prefilled = 0
                continue
            self.metrics.shared_prompt_tokens.inc(len(other.prompt) - other.prefilled)
            other.prefilled = len(other.prompt)
            self.prefilling.remove(other)
            self.running[other.slot] = other
            same.append(other)
        return [request, *same]

    def _reserve(self, request: Request, length: int, wait: bool) -> bool:
        """Blocks for the first ``length`` positions of the request's slot. Where the pool lacks them: False if
        ``wait``; else the latest admitted request is preempted until they are had — of those whose preemption frees
        a block (one it alone holds) where there are any — or, when that is this one, False."""
        while True:
            try:
                self.cache.reserve(request.slot, length)
                return True
            except OutOfBlocks:
                if wait:
                    return False
                holders = [r for r in (*self.running.values(), *self.prefilling) if r.slot is not None]
                freeing = [r for r in holders if any(self.cache.refs[b] == 1 for b in self.cache.tables[r.slot])]
                victim = max(freeing or holders, key=lambda r: r.admitted)
                self._preempt(victim)
                if victim is request:
                    return False

    def _preempt(self, request: Request) -> None:
        """Free the request's slot and blocks; it waits at the head of the queue to read its prompt and its tokens
        again."""
        self.metrics.preemptions.inc()
        self._release(request)
        request.prefilled = 0
        with self.condition:
            self.queue.appendleft(request)
