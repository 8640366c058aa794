"""Constraints on the next token: small functions ``(input_ids, scores) -> scores`` that ban tokens (-inf).

    input_ids: (batch, seq) the tokens so far (prompt included)
    scores:    (batch, vocab) logits, or log-probabilities in beam search

They shape every search (greedy, sampling, beam) and compose by plain function application, after the repetition
penalty; the batched sampler (``glassformer.generation.sampler``) applies them, then temperature, top-k and top-p.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from glassformer.generation.config import GenerationConfig

LogitsProcessor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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
    """The constraints ``config`` asks for, in application order (``prompt_length``: where new tokens start, for
    ``min_new_tokens``)."""
    processors: list[LogitsProcessor] = []
    if config.no_repeat_ngram_size > 0:
        processors.append(no_repeat_ngram(config.no_repeat_ngram_size))
    if config.min_new_tokens > 0 and config.eos_token_id is not None:
        processors.append(min_new_tokens(config.min_new_tokens, prompt_length, config.eos_token_id))
    return processors


def apply_processors(processors: list[LogitsProcessor], input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    for process in processors:
        scores = process(input_ids, scores)
    return scores
