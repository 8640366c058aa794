"""Speculative decoding: guess the next tokens cheaply, check every guess in one forward pass of the model, keep
what the model agrees with. Two drafters:

    PromptLookup    the tokens that followed the latest earlier occurrence of the sequence's last n tokens (n =
                    max_matching_ngram_size down to 2), at most ``prompt_lookup_num_tokens`` (Saxena's prompt-lookup
                    decoding): text that quotes its input — an edit, a summary, code — gets several tokens a pass
    AssistantModel  another model's greedy tokens, ``num_assistant_tokens`` at a time (``assistant_model``: a small
                    model with the same vocabulary, or the model itself quantized to int4)

and one check:

    verify    one forward pass over [the pending token, draft_1 .. draft_d]: position j's scores test draft_{j+1}
              (``sampler.verify``: greedy keeps it if it is the argmax; sampling accepts it with probability p(draft),
              else draws from p without it — the distribution of plain sampling, exactly)
    keep      the accepted drafts and one more token (the correction, or the bonus after the last draft); the cache
              is rewound past what was rejected
    back off  (prompt lookup) after a pass that kept no draft, the next 1, 2, 4 … 16 passes draft nothing (text
              that does not quote pays for almost no failed checks); a kept draft ends the pause

Greedy output is the same as plain decoding; sampled output has the same distribution. One sequence at a time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from glassformer.generation import sampler
from glassformer.generation.config import GenerationConfig
from glassformer.generation.sampler import Sampling
from glassformer.generation.step import choose_step

MIN_NGRAM = 2  # a single matching token drafts mostly wrong guesses
MAX_PAUSE = 16


def prompt_lookup(sequence: list[int], count: int, max_ngram: int, min_ngram: int = 1) -> list[int]:
    """Up to ``count`` tokens that followed the latest earlier occurrence of the sequence's last n-gram, trying
    n = ``max_ngram`` down to ``min_ngram``; empty when none occurs."""
    for n in range(min(max_ngram, len(sequence) - 1), min_ngram - 1, -1):
        tail = sequence[-n:]
        for start in range(len(sequence) - n - 1, -1, -1):  # latest first, never the tail itself
            if sequence[start : start + n] == tail:
                return sequence[start + n : start + n + count]
    return []


class PromptLookup:
    """Drafts by prompt lookup (``config.prompt_lookup_num_tokens``, ``max_matching_ngram_size``), pausing after a
    pass that kept no draft."""

    def __init__(self, config: GenerationConfig):
        self.count, self.max_ngram = config.prompt_lookup_num_tokens, config.max_matching_ngram_size
        self.pause = self.skip = 0  # passes left without drafting; the next pause's length

    def draft(self, sequence: list[int], room: int) -> list[int]:
        if self.pause:
            self.pause -= 1
            return []
        return prompt_lookup(sequence, min(self.count, room), self.max_ngram, MIN_NGRAM)

    def kept(self, length: int, drafted: int, accepted: int) -> None:
        if drafted:
            self.skip = 0 if accepted else min(MAX_PAUSE, 2 * self.skip or 1)
            self.pause = self.skip


class AssistantModel:
    """Drafts with another model's greedy tokens (``generate(..., assistant_model=...)``: a smaller model with the
    same vocabulary, or the same model quantized to int4 drafting for its float self), ``count`` at a time. Its own
    cache follows the sequence and is rewound past the drafts that were not kept."""

    def __init__(self, assistant, count: int, max_length: int):
        self.model, self.count, self.step = assistant, count, choose_step(assistant)
        self.cache = assistant.make_cache(1, max_length)

    def draft(self, sequence: list[int], room: int) -> list[int]:
        count = min(self.count, room)
        if count <= 0:
            return []
        device = self.cache.keys.device
        unfed = torch.tensor([sequence[self.cache.length :]], device=device)  # what it has not seen yet
        logits, draft = self.step.block(unfed, self.cache)[-1:], []
        while True:
            draft.append(int(logits.argmax(-1)))
            if len(draft) == count:
                return draft
            logits = self.step(torch.tensor([draft[-1:]], device=device), None, self.cache)

    def kept(self, length: int, drafted: int, accepted: int) -> None:
        """Its cache holds the sequence (``length`` tokens) and all drafts but the last: keep what stayed true."""
        self.cache.rewind(length + min(accepted, max(drafted - 1, 0)))


def drafter(model, assistant_model, config: GenerationConfig, max_length: int) -> PromptLookup | AssistantModel | None:
    """The drafter ``generate`` was asked for, or None; a one-line ``ValueError`` where it cannot serve."""
    if assistant_model is None and not config.prompt_lookup_num_tokens:
        return None
    if config.num_beams > 1 or not config.use_cache:
        raise ValueError("speculative decoding drafts for greedy or sampled decoding with the cache; "
                         "use num_beams=1 and use_cache=True")  # fmt: skip
    if assistant_model is None:
        return PromptLookup(config)
    if assistant_model.config.vocab_size != model.config.vocab_size:
        raise ValueError(f"the assistant model's vocabulary has {assistant_model.config.vocab_size} tokens and the "
                         f"model's {model.config.vocab_size}; draft with a model of the same tokenizer")  # fmt: skip
    return AssistantModel(assistant_model, config.num_assistant_tokens, max_length)


def speculative_decode(
    model,
    step,
    input_ids: torch.Tensor,
    config: GenerationConfig,
    max_length: int,
    sampling: Sampling,
    drafter: PromptLookup | AssistantModel,
    on_tokens: Callable[[torch.Tensor], None] | None = None,
    stats: dict | None = None,
) -> torch.Tensor:
    """``generate``'s greedy or sampled decoding of one sequence ``(1, prompt)``, checking the ``drafter``'s
    guesses; returns prompt + new tokens. ``stats`` (a dict) receives ``drafted``, ``accepted`` and ``passes``."""
    if input_ids.size(0) != 1:
        raise ValueError("speculative decoding takes one sequence at a time; pass one prompt (batch of 1)")
    device, prompt = input_ids.device, input_ids.size(1)
    sequence = input_ids[0].tolist()
    cache = model.make_cache(1, max_length)
    logits = step(input_ids, None, cache)  # the prompt; the cache holds it
    pending = _choose(logits, sequence, prompt, sampling)
    counts = {"drafted": 0, "accepted": 0, "passes": 0}
    new = [pending]
    while True:
        sequence += new
        if on_tokens is not None:
            for token in new:
                on_tokens(torch.tensor([token], device=device))
        if config.eos_token_id in new or len(sequence) >= max_length:
            break
        draft = drafter.draft(sequence, max_length - len(sequence))
        base = cache.length  # every token but the pending one is in the cache
        scores = step.block(torch.tensor([[pending, *draft]], device=device), cache)  # (1 + d, vocab)
        new = []
        for j, drafted in enumerate(draft):
            accepted, token = sampler.verify(_scores(scores[j : j + 1], sequence + new, prompt, sampling), sampling,
                                             drafted)  # fmt: skip
            new.append(token)
            if not accepted:
                break
        else:
            new.append(_choose(scores[len(draft) :], sequence + new, prompt, sampling))
        cache.rewind(base + len(new))  # the pending token and the accepted drafts; the last new token is pending
        drafter.kept(len(sequence), len(draft), len(new) - 1)
        counts["drafted"] += len(draft)
        counts["accepted"] += len(new) - 1
        counts["passes"] += 1
        if config.eos_token_id in new:
            new = new[: new.index(config.eos_token_id) + 1]
        new = new[: max_length - len(sequence)]
        pending = new[-1]
    if stats is not None:
        stats.update(counts)
    return torch.tensor([sequence], device=device)


def _scores(logits: torch.Tensor, sequence: list[int], prompt: int, sampling: Sampling) -> torch.Tensor:
    """The sampler's scores of the next token after ``sequence``; the sequence becomes a tensor only where a penalty
    or a constraint reads it."""
    history = counts = None
    if sampling.penalized or sampling.counted or sampling.constraints:
        history = torch.tensor([sequence], device=logits.device)
    if sampling.counted:
        counts = sampler.token_counts(history[:, prompt:], logits.size(-1))
    return sampler.scores(logits, history, sampling, counts)


def _choose(logits: torch.Tensor, sequence: list[int], prompt: int, sampling: Sampling) -> int:
    return sampler.choose(_scores(logits[-1:], sequence, prompt, sampling), sampling)[0]
