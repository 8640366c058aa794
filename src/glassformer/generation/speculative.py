"""Speculative decoding with prompt lookup: draft the next tokens by finding the sequence's last n-gram earlier in
it (Saxena's prompt-lookup decoding, transformers' ``prompt_lookup_num_tokens``), check every draft in one forward
pass, keep what the model agrees with. Text that quotes its input — a summary, an edit, code — gets several tokens
per pass for the price of about one.

    draft     the tokens that followed the latest earlier occurrence of the last n tokens (n = max_matching_ngram_size
              down to 1), at most ``prompt_lookup_num_tokens`` of them
    verify    one forward pass over [the pending token, draft_1 .. draft_d]: position j's scores test draft_{j+1}
              (``sampler.verify``: greedy keeps it if it is the argmax; sampling accepts it with probability p(draft),
              else draws from p without it — the distribution of plain sampling, exactly)
    keep      the accepted drafts and one more token (the correction, or the bonus after the last draft); the cache
              is rewound past what was rejected
    back off  after a pass that kept no draft, the next 1, 2, 4 … 16 passes draft nothing (text that does not
              quote pays for almost no failed checks); a kept draft ends the pause

Greedy output is the same as plain decoding; sampled output has the same distribution. One sequence at a time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from glassformer.generation import sampler
from glassformer.generation.config import GenerationConfig
from glassformer.generation.sampler import Sampling

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


def prompt_lookup_decode(
    model,
    step,
    input_ids: torch.Tensor,
    config: GenerationConfig,
    max_length: int,
    sampling: Sampling,
    on_tokens: Callable[[torch.Tensor], None] | None = None,
    stats: dict | None = None,
) -> torch.Tensor:
    """``generate``'s greedy or sampled decoding of one sequence ``(1, prompt)``, drafting by prompt lookup; returns
    prompt + new tokens. ``stats`` (a dict) receives ``drafted``, ``accepted`` and ``passes``."""
    if input_ids.size(0) != 1:
        raise ValueError("prompt lookup decoding takes one sequence at a time; pass one prompt (batch of 1)")
    device, prompt = input_ids.device, input_ids.size(1)
    sequence = input_ids[0].tolist()
    cache = model.make_cache(1, max_length)
    logits = step(input_ids, None, cache)  # the prompt; the cache holds it
    pending = _choose(logits, sequence, prompt, sampling)
    counts = {"drafted": 0, "accepted": 0, "passes": 0}
    new, pause, skip = [pending], 0, 0  # back-off: passes left without drafting, and the next pause's length
    while True:
        sequence += new
        if on_tokens is not None:
            for token in new:
                on_tokens(torch.tensor([token], device=device))
        if config.eos_token_id in new or len(sequence) >= max_length:
            break
        draft = []
        if pause == 0:
            draft = prompt_lookup(sequence, min(config.prompt_lookup_num_tokens, max_length - len(sequence)),
                                  config.max_matching_ngram_size, MIN_NGRAM)  # fmt: skip
        pause = max(pause - 1, 0)
        base = cache.length  # every token but the pending one is in the cache
        block = torch.tensor([[pending, *draft]], device=device)
        scores = step.block(block, cache)  # (1 + d, vocab): the fused step where it takes the model
        new = []
        for j, drafted in enumerate(draft):
            history = torch.tensor([sequence + new], device=device)
            accepted, token = sampler.verify(_scores(scores[j : j + 1], history, prompt, sampling), sampling, drafted)
            new.append(token)
            if not accepted:
                break
        else:
            new.append(_choose(scores[len(draft) :], sequence + new, prompt, sampling))
        cache.rewind(base + len(new))  # the pending token and the accepted drafts; the last new token is pending
        if draft:
            skip = 0 if len(new) > 1 else min(MAX_PAUSE, 2 * skip or 1)
            pause = skip
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


def _scores(logits: torch.Tensor, history: torch.Tensor, prompt: int, sampling: Sampling) -> torch.Tensor:
    counts = sampler.token_counts(history[:, prompt:], logits.size(-1)) if sampling.counted else None
    return sampler.scores(logits, history, sampling, counts)


def _choose(logits: torch.Tensor, sequence: list[int], prompt: int, sampling: Sampling) -> int:
    history = torch.tensor([sequence], device=logits.device)
    return sampler.choose(_scores(logits[-1:], history, prompt, sampling), sampling)[0]
