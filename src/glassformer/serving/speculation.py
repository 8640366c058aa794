"""Speculative decoding in the server (``glassformer serve --prompt-lookup N``): while one request runs alone, each
step checks up to N tokens that prompt lookup guesses (``glassformer.generation.speculative``: the tokens that
followed the latest earlier occurrence of the sequence's last n-gram) in one forward pass over the request's slot,
and keeps what the model agrees with, plus one token:

    draft     up to N tokens, within the request's max_tokens and the slot's context; none after a pass that
              kept none (the drafter's back-off), and then the plain step serves the request
    check     one block of [the pending token, draft_1 .. draft_d] after the slot's cache (``DecodingStep.block``:
              the fused CPU step where it serves the model, else the modules)
    keep      ``sampler.verify`` per draft (greedy: the argmax; sampled: the accept/reject rule, so the tokens are
              distributed as plain sampling's), then the correction or the bonus token; the slot is rewound past
              what was rejected

Greedy answers are the plain server's token for token. With more than one request running, the batched step is
cheaper per token than a block per request, so speculation waits; requests with structured output, logprobs or
penalties are served plainly. ``glassformer_speculative_draft_tokens`` and ``..._accepted_tokens`` (/metrics)
give the acceptance rate.
"""

from __future__ import annotations

import torch

from glassformer.generation import sampler
from glassformer.generation.config import GenerationConfig
from glassformer.generation.speculative import PromptLookup
from glassformer.generation.step import DecodingStep
from glassformer.nn.slot_cache import OutOfBlocks, SlotCache
from glassformer.serving.metrics import Metrics
from glassformer.serving.requests import Request


def check_speculation(prompt_lookup: int, batch_invariant: bool) -> None:
    """A one-line ``ValueError`` for speculation with ``batch_invariant``: a request checked in blocks while it runs
    alone draws its tokens otherwise than beside others (greedy ties, sampled ones), which that mode forbids."""
    if prompt_lookup and batch_invariant:
        raise ValueError("--prompt-lookup and --batch-invariant do not go together: a request running alone would "
                         "decode otherwise than beside others; choose one")  # fmt: skip


class Speculation:
    """Prompt-lookup drafts of ``count`` tokens checked in the slots of ``cache`` through ``step``."""

    def __init__(self, step: DecodingStep, cache: SlotCache, count: int, metrics: Metrics):
        self.step, self.cache, self.metrics = step, cache, metrics
        self.config = GenerationConfig(prompt_lookup_num_tokens=count)

    @staticmethod
    def takes(request: Request) -> bool:
        """Plain greedy or sampled decoding: no grammar, no logprobs, no penalties reading the history."""
        sampling = request.sampling
        return (
            request.guide is None and request.logprobs is None and request.counts is None
            and not sampling.penalized and not sampling.constraints
        )  # fmt: skip

    def tokens(self, request: Request, max_context: int) -> list[int] | None:
        """The request's next tokens from one checked draft (at least one token), or None where nothing was drafted
        (the plain step serves it)."""
        if request.drafter is None:
            request.drafter = PromptLookup(self.config)
        sequence = request.prompt + request.tokens
        # positions written: the pending token and d drafts; new tokens: at most d + 1
        room = min(max_context - len(sequence), request.max_tokens - len(request.tokens) - 1)
        draft = request.drafter.draft(sequence, room) if room > 0 else []
        if not draft:
            return None
        slot, sampling = request.slot, request.sampling
        base = self.cache.lengths[slot]  # every token but the pending one is in the slot
        try:
            self.cache.reserve(slot, base + 1 + len(draft))
        except OutOfBlocks:  # no blocks for the drafts: the plain step serves the request
            return None
        ids = torch.tensor([[request.tokens[-1], *draft]], device=self.cache.keys.device)
        scores = self.step.block(ids, self.cache.view([slot]))  # (1 + d, vocab)
        new = []
        for j, drafted in enumerate(draft):
            accepted, token = sampler.verify(sampler.scores(scores[j : j + 1], None, sampling, None), sampling, drafted)
            new.append(token)
            if not accepted:
                break
        else:
            new.append(sampler.choose(sampler.scores(scores[len(draft) :], None, sampling, None), sampling)[0])
        self.cache.lengths[slot] = base + len(new)  # the pending token and the accepted drafts
        request.drafter.kept(len(sequence), len(draft), len(new) - 1)
        self.metrics.draft_tokens.inc(len(draft))
        self.metrics.accepted_tokens.inc(len(new) - 1)
        return new
