"""Logits processors: small functions ``(input_ids, scores) -> scores`` applied to the next-token scores.

    input_ids: (batch, seq) the tokens so far (prompt included)
    scores:    (batch, vocab) logits, or log-probabilities in beam search

They compose by plain function application, in this order: repetition penalty and no-repeat-n-gram shape every
search; temperature, top-k and top-p only reshape the distribution that sampling draws from. A banned token gets
a score of -inf.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from glassformer.generation.config import GenerationConfig

LogitsProcessor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def repetition_penalty(penalty: float) -> LogitsProcessor:
    """CTRL's penalty (Keskar et al., 2019) on every token already in the sequence:
    a positive score is divided by ``penalty``, a negative one multiplied by it."""

    def apply(input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        seen = scores.gather(1, input_ids)
        seen = torch.where(seen < 0, seen * penalty, seen / penalty)
        return scores.scatter(1, input_ids, seen)

    return apply


def no_repeat_ngram(n: int) -> LogitsProcessor:
    """Ban every token that would complete an n-gram already present in the sequence."""

    def apply(input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        length = input_ids.size(1)
        if length + 1 < n:
            return scores
        scores = scores.clone()
        for row, ids in enumerate(input_ids.tolist()):
            prefix = tuple(ids[length - n + 1 :]) if n > 1 else ()
            banned = {ids[i + n - 1] for i in range(length - n + 1) if tuple(ids[i : i + n - 1]) == prefix}
            if banned:
                scores[row, list(banned)] = float("-inf")
        return scores

    return apply


def temperature(t: float) -> LogitsProcessor:
    """scores / t: t < 1 sharpens the distribution, t > 1 flattens it."""
    return lambda input_ids, scores: scores / t


def top_k(k: int) -> LogitsProcessor:
    """Keep the k highest scores (ties with the k-th kept), -inf elsewhere."""

    def apply(input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        kth = torch.topk(scores, min(k, scores.size(-1))).values[..., -1:]
        return scores.masked_fill(scores < kth, float("-inf"))

    return apply


def top_p(p: float) -> LogitsProcessor:
    """Nucleus sampling (Holtzman et al., 2019): keep the smallest set of most likely tokens whose probability
    mass is at least p (always at least one token), -inf elsewhere."""

    def apply(input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        sorted_scores, order = torch.sort(scores, descending=False)
        cumulative = sorted_scores.softmax(-1).cumsum(-1)
        drop_sorted = cumulative <= 1 - p  # the low tail whose total mass is at most 1 - p
        drop_sorted[..., -1] = False
        drop = drop_sorted.scatter(1, order, drop_sorted)
        return scores.masked_fill(drop, float("-inf"))

    return apply


def min_new_tokens(minimum: int, prompt_length: int, eos_token_id: int) -> LogitsProcessor:
    """Ban the end-of-sequence token until ``minimum`` tokens follow the prompt."""

    def apply(input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.size(1) - prompt_length >= minimum:
            return scores
        scores = scores.clone()
        scores[:, eos_token_id] = float("-inf")
        return scores

    return apply


def build_processors(config: GenerationConfig, prompt_length: int = 0) -> list[LogitsProcessor]:
    """The processors ``config`` asks for, in application order (``prompt_length``: where new tokens start, for
    ``min_new_tokens``)."""
    processors: list[LogitsProcessor] = []
    if config.repetition_penalty != 1.0:
        processors.append(repetition_penalty(config.repetition_penalty))
    if config.no_repeat_ngram_size > 0:
        processors.append(no_repeat_ngram(config.no_repeat_ngram_size))
    if config.min_new_tokens > 0 and config.eos_token_id is not None:
        processors.append(min_new_tokens(config.min_new_tokens, prompt_length, config.eos_token_id))
    if config.do_sample:
        if config.temperature != 1.0:
            processors.append(temperature(config.temperature))
        if config.top_k:
            processors.append(top_k(config.top_k))
        if config.top_p is not None and config.top_p < 1.0:
            processors.append(top_p(config.top_p))
    return processors


def apply_processors(processors: list[LogitsProcessor], input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    for process in processors:
        scores = process(input_ids, scores)
    return scores
