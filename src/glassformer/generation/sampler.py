"""One batched sampler: the next token of every row in one pass, each row with its own settings, held as tensors.

    scores   logits (batch, vocab), then for every search:
             repetition penalty (CTRL, Keskar et al. 2019) on each token already in the row:
                 s / p where s > 0, s · p where s < 0
             presence and frequency penalties (OpenAI's) on the row's new tokens, counted:
                 s − frequency · count − presence · [count > 0]
             the constraints of ``glassformer.generation.processors`` (no_repeat_ngram, min_new_tokens) and each
             row's guide (structured output: ``glassformer.generation.structured``): -inf
    greedy   rows with temperature 0:  argmax(scores)
    sampled  the other rows:  s / T;  top-k: keep the k highest (ties kept);  top-p (Holtzman et al. 2019): keep the
             smallest set of most likely tokens whose mass reaches p (at least one);  then a draw from the softmax by
             the exponential race: argmax_i p_i / E_i with E_i ~ Exp(1), which picks i with probability p_i (the same
             distribution as ``torch.multinomial``). A row with its own generator (a seed) draws its E from it alone,
             so its tokens never depend on the other rows of the batch.

``generate`` (greedy and sampling), beam search's candidate step (``scores`` only: its own top-2k follows) and the
server's batched step all call this. Each step reads back one small tensor — the tokens with two flags — so there
is one host sync per step: ``choose`` refuses NaN scores and rows whose every token is banned in one line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from glassformer.generation.config import GenerationConfig
from glassformer.generation.processors import LogitsProcessor, apply_processors

TENSORS = ("temperature", "top_k", "top_p", "repetition_penalty", "presence", "frequency")  # one value per row


@dataclasses.dataclass
class Sampling:
    """Per-row settings ``(batch,)``: ``temperature`` (0: greedy), ``top_k`` (0: every token), ``top_p`` (1: every
    token), ``repetition_penalty`` (1: none), ``presence`` / ``frequency`` penalties (0: none), and each row's
    ``generators`` (None: torch's default generator)."""

    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    repetition_penalty: torch.Tensor
    presence: torch.Tensor
    frequency: torch.Tensor
    generators: list[torch.Generator | None]
    constraints: list[LogitsProcessor] = dataclasses.field(default_factory=list)  # the same for every row
    guides: list | None = None  # per row, a structured-output Guide or None (glassformer.generation.structured)
    # what the host knows without reading a tensor back (no device sync): which rows sample, which steps are needed
    sampled_rows: list[int] = dataclasses.field(default_factory=list)
    penalized: bool = False  # a repetition penalty
    counted: bool = False  # presence / frequency penalties
    filtered: bool = False  # top-k / top-p

    @classmethod
    def of(
        cls,
        configs: Sequence[GenerationConfig],
        generators: Sequence[torch.Generator | None] | None = None,
        constraints: list[LogitsProcessor] | None = None,
        device: torch.device | str = "cpu",
    ) -> Sampling:
        """The settings of one ``GenerationConfig`` per row (``do_sample`` False: greedy)."""

        def column(value, off, dtype):  # a row that does not sample gets the value that changes nothing
            return torch.tensor([value(c) if c.do_sample else off for c in configs], dtype=dtype, device=device)

        return cls(
            temperature=column(lambda c: c.temperature, 0.0, torch.float32),
            top_k=column(lambda c: c.top_k or 0, 0, torch.long),
            top_p=column(lambda c: 1.0 if c.top_p is None else c.top_p, 1.0, torch.float32),
            repetition_penalty=torch.tensor([c.repetition_penalty for c in configs], device=device),
            presence=torch.tensor([c.presence_penalty for c in configs], device=device),
            frequency=torch.tensor([c.frequency_penalty for c in configs], device=device),
            generators=list(generators) if generators is not None else [None] * len(configs),
            constraints=constraints or [],
            sampled_rows=[i for i, c in enumerate(configs) if c.do_sample],
            penalized=any(c.repetition_penalty != 1 for c in configs),
            counted=any(c.presence_penalty != 0 or c.frequency_penalty != 0 for c in configs),
            filtered=any(c.do_sample and (c.top_k or (c.top_p is not None and c.top_p < 1)) for c in configs),
        )

    @classmethod
    def stack(cls, parts: Sequence[Sampling]) -> Sampling:
        """The rows of several settings, one after another (the server's running requests, one each); their
        constraints must be the same."""
        guides = [g for p in parts for g in (p.guides or [None] * len(p.generators))]
        offsets = [0]
        for p in parts:
            offsets.append(offsets[-1] + len(p.generators))
        return cls(
            *(torch.cat([getattr(p, name) for p in parts]) for name in TENSORS),
            [g for p in parts for g in p.generators], parts[0].constraints,
            guides if any(g is not None for g in guides) else None,
            sampled_rows=[offset + i for p, offset in zip(parts, offsets, strict=False) for i in p.sampled_rows],
            penalized=any(p.penalized for p in parts), counted=any(p.counted for p in parts),
            filtered=any(p.filtered for p in parts),
        )  # fmt: skip

    def rows(self, index: Sequence[int]) -> Sampling:
        """The settings of some rows (the server's running requests)."""
        i = torch.tensor(list(index), dtype=torch.long, device=self.temperature.device)
        guides = None if self.guides is None else [self.guides[j] for j in index]
        sampled = set(self.sampled_rows)
        return Sampling(
            *(getattr(self, name)[i] for name in TENSORS), [self.generators[j] for j in index], self.constraints,
            guides, [k for k, j in enumerate(index) if j in sampled], self.penalized, self.counted, self.filtered,
        )  # fmt: skip


def scores(
    logits: torch.Tensor, history: torch.Tensor | None, sampling: Sampling, counts: torch.Tensor | None = None
) -> torch.Tensor:
    """The penalized and constrained scores ``(batch, vocab)`` in float32. ``history`` ``(batch, seq)``: each row's
    tokens so far (prompt included; a padding token counts as seen, as in ``transformers``); ``counts``
    ``(batch, vocab)``: how often each token was generated in the row (``token_counts``); each needed only for a
    penalty or a constraint that reads it."""
    scores = logits.float()
    if sampling.penalized:
        penalty = sampling.repetition_penalty[:, None]
        seen = scores.gather(1, history)
        scores = scores.scatter(1, history, torch.where(seen < 0, seen * penalty, seen / penalty))
    if sampling.counted:
        scores = scores - sampling.frequency[:, None] * counts - sampling.presence[:, None] * (counts > 0)
    if sampling.guides is not None:  # structured output: what each row's grammar allows
        vocab = scores.size(-1)
        allowed = torch.stack([g.allowed()[:vocab] if g is not None else torch.ones(vocab, dtype=torch.bool)
                               for g in sampling.guides]).to(scores.device)  # fmt: skip
        scores = scores.masked_fill(~allowed, float("-inf"))
    return apply_processors(sampling.constraints, history, scores)


def choose(scores: torch.Tensor, sampling: Sampling, unfinished: torch.Tensor | None = None) -> list[int]:
    """The next token of every row, as a list (the step's one read-back). ``unfinished`` ``(batch,)``: rows that
    still need a token (a finished row's scores are not checked)."""
    tokens = scores.argmax(-1)
    if sampling.sampled_rows:
        rows = torch.tensor(sampling.sampled_rows, device=scores.device)
        drawn = _draw(scores[rows], sampling.rows(sampling.sampled_rows))
        tokens = tokens.index_copy(0, rows, drawn)
    *tokens, any_nan, any_banned = torch.cat((tokens, _flags(scores, unfinished))).tolist()
    _refuse(any_nan, any_banned)
    return tokens


def _flags(scores: torch.Tensor, unfinished: torch.Tensor | None = None) -> torch.Tensor:
    """``[any NaN score, any row with every token banned]`` over the rows still ``unfinished``, as a tensor: from
    each row's largest score alone (one read of the scores), NaN where the row holds a NaN (``amax`` propagates it),
    -inf where every token is banned."""
    top = scores.amax(-1)
    nan, banned = top.isnan(), top == float("-inf")
    if unfinished is not None:
        nan, banned = nan & unfinished, banned & unfinished
    return torch.stack((nan.any(), banned.any())).long()


def _refuse(any_nan: bool, any_banned: bool) -> None:
    if any_nan:
        raise FloatingPointError(
            "the model produced NaN scores; its weights are damaged or the precision overflowed — try fp32"
        )
    if any_banned:
        raise ValueError(
            "no token is allowed: the generation options (min_new_tokens, no_repeat_ngram_size, top_k, top_p, ...) "
            "ban every token; relax them"
        )


def verify(scores: torch.Tensor, sampling: Sampling, draft: int) -> tuple[bool, int]:
    """Speculative decoding's test of a drafted token for one row (``scores`` ``(1, vocab)``): ``(accepted, token)``.
    Greedy: accepted when it is the argmax, else the argmax. Sampled, with a draft that proposes one token (q = δ_d):
    accepted with probability p(d), else a draw from p with d removed, renormalized — so the token is distributed as
    p exactly (Leviathan et al. 2023; Chen et al. 2023), whatever was drafted."""
    if not sampling.sampled_rows:
        (token,) = choose(scores, sampling)
        return token == draft, token
    probs = filtered(scores, sampling).softmax(-1)[0]
    generator = sampling.generators[0]
    if float(torch.rand(1, generator=generator, device=probs.device)) < float(probs[draft]):
        return True, draft
    rest = probs.clone()
    rest[draft] = 0
    if float(rest.sum()) <= 0:  # p was all on the draft: it would have been accepted
        return True, draft
    race = torch.empty_like(rest).exponential_(generator=generator)
    return False, int((rest / race).argmax())


def token_counts(generated: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``(batch, vocab)``: how often each token occurs in each row of ``generated`` ``(batch, n)``."""
    counts = torch.zeros(generated.size(0), vocab_size, device=generated.device)
    return counts.scatter_add_(1, generated, torch.ones_like(generated, dtype=counts.dtype))


def logprobs(logits: torch.Tensor, tokens: Sequence[int], top: int) -> list[tuple[float, list[int], list[float]]]:
    """Per row: the log-probability of its chosen token under the model's distribution (log-softmax of the logits,
    before any penalty or temperature), and the ``top`` most likely tokens with theirs."""
    log_probs = logits.float().log_softmax(-1)
    chosen = log_probs.gather(1, torch.tensor(tokens, device=logits.device)[:, None])[:, 0].tolist()
    values, ids = log_probs.topk(top, -1) if top > 0 else (log_probs[:, :0], log_probs[:, :0].long())
    return list(zip(chosen, ids.tolist(), values.tolist(), strict=True))


def check(best: torch.Tensor) -> None:
    """``choose``'s refusals for beam search, which ranks candidates itself, from each row's best candidates
    ``(batch, k)``, best first: ``topk`` ranks a NaN first, and a row whose best is -inf has every token banned. A
    few values read instead of the whole vocabulary twice; one read-back."""
    _refuse(*torch.stack((best.isnan().any(), best[:, 0].isneginf().any())).tolist())


def filtered(scores: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """``scores / T`` with what top-k and then top-p drop set to -inf, row by row (``(batch, vocab)``; a greedy
    row's scores are left as they are)."""
    temperature = sampling.temperature
    scores = scores / torch.where(temperature > 0, temperature, 1.0)[:, None]
    if not sampling.filtered:
        return scores
    top_k, top_p = sampling.top_k, sampling.top_p
    vocab = scores.size(-1)
    ascending, order = scores.sort(-1)
    k = torch.where(top_k > 0, top_k.clamp(max=vocab), vocab)
    kth = ascending.gather(1, (vocab - k)[:, None])  # the k-th highest score
    ascending = ascending.masked_fill(ascending < kth, float("-inf"))
    # the low tail whose total mass is at most 1 - p, never the most likely token
    drop = ascending.softmax(-1).cumsum(-1) <= (1 - top_p)[:, None]
    drop[:, -1] = False
    drop = drop.scatter(1, order, drop) | (scores < kth)
    return scores.masked_fill(drop, float("-inf"))


def _draw(scores: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """One token per row from softmax(filtered scores), by the exponential race."""
    probs = filtered(scores, sampling).softmax(-1)
    race = torch.empty_like(probs)
    shared = [i for i, g in enumerate(sampling.generators) if g is None]
    if shared:  # rows without a seed: one draw from torch's default generator
        race[shared] = torch.empty(len(shared), probs.size(-1), device=probs.device).exponential_()
    for i, generator in enumerate(sampling.generators):
        if generator is not None:  # a seeded row: its own draw
            race[i].exponential_(generator=generator)
    return (probs / race).argmax(-1)
