"""``GenerationConfig``: how to decode, with ``transformers``' names, checked once in ``validate``.

Every model's ``generate(input_ids, generation_config=None, **options)`` takes one; ``options`` are its fields
given as keywords (``max_new_tokens=20, num_beams=4``), which override the config's.

Length: ``max_new_tokens`` new tokens, or ``max_length`` tokens in all (the prompt counted, as in
``transformers``); ``max_new_tokens`` wins when both are given; with neither, ``max_length`` is 20.
``min_new_tokens``: the end-of-sequence token is banned until that many new tokens exist.
Search: greedy (default), sampling (``do_sample`` with ``temperature``, ``top_k``, ``top_p``, ``seed``), or beam
search (``num_beams`` > 1, finished hypotheses ranked by sum of log-probabilities / length^``length_penalty``;
``num_return_sequences`` ≤ ``num_beams`` of them returned per input, best first).
Every search: ``repetition_penalty`` (CTRL's, on every token of the sequence), ``presence_penalty`` and
``frequency_penalty`` (OpenAI's, on the new tokens: s − f · count − p · [count > 0]), ``no_repeat_ngram_size``;
``eos_token_id`` ends a sequence, whose row is then filled with ``pad_token_id`` (``eos_token_id`` if there is no
pad) until all have ended. ``prompt_lookup_num_tokens``: speculative decoding that drafts up to that many tokens
by finding the sequence's last ``max_matching_ngram_size`` tokens earlier in it (``glassformer.generation.
speculative``; one sequence at a time, the same tokens as without it); ``num_assistant_tokens``: the drafts of
an ``assistant_model`` given to ``generate``.
"""

from __future__ import annotations

import dataclasses

from glassformer.options import check_fields

DEFAULT_MAX_LENGTH = 20


@dataclasses.dataclass
class GenerationConfig:
    max_new_tokens: int | None = None
    max_length: int | None = None
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    no_repeat_ngram_size: int = 0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    num_beams: int = 1
    length_penalty: float = 1.0
    num_return_sequences: int = 1
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    seed: int | None = None
    use_cache: bool = True
    prompt_lookup_num_tokens: int | None = None
    max_matching_ngram_size: int = 2
    num_assistant_tokens: int = 5

    @property
    def fill_token_id(self) -> int:
        """What fills a row after its end: ``pad_token_id``, else ``eos_token_id``, else 0."""
        if self.pad_token_id is not None:
            return self.pad_token_id
        return self.eos_token_id if self.eos_token_id is not None else 0

    def updated(self, **options) -> GenerationConfig:
        """A copy with ``options`` (field names) replaced; an unknown name is a one-line error."""
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise ValueError(f"unknown generation option(s) {unknown}; the options are {sorted(fields)}")
        return dataclasses.replace(self, **options)

    def validate(self, vocab_size: int | None = None) -> None:
        """Every value in range and the options compatible, each failure a one-line ``ValueError``."""
        check_fields(self)  # every field's type and range (glassformer.options.RULES)
        if self.do_sample and self.temperature <= 0:
            raise ValueError(
                f"temperature must be > 0 when sampling, got {self.temperature}; use do_sample=False for greedy"
            )
        if self.num_beams > 1 and self.do_sample:
            raise ValueError("beam search with sampling is not supported; use num_beams=1 to sample")
        if self.num_return_sequences > self.num_beams:
            raise ValueError(f"num_return_sequences={self.num_return_sequences} is more than the "
                             f"{self.num_beams} beams' hypotheses; raise num_beams to at least it")  # fmt: skip
        if self.prompt_lookup_num_tokens and (self.num_beams > 1 or not self.use_cache):
            raise ValueError("prompt_lookup_num_tokens drafts for greedy or sampled decoding with the cache; "
                             "use num_beams=1 and use_cache=True")  # fmt: skip
        if vocab_size is not None:
            for name in ("eos_token_id", "pad_token_id"):
                value = getattr(self, name)
                if value is not None and not 0 <= value < vocab_size:
                    raise ValueError(f"{name}={value} is outside the model's vocabulary [0, {vocab_size})")

    def total_length(self, prompt_length: int, context: int) -> int:
        """The length of prompt + new tokens this config asks for, checked against the model's context."""
        if prompt_length >= context:
            raise ValueError(
                f"the prompt has {prompt_length} tokens and the model's context is {context}; shorten the prompt"
            )
        if self.max_new_tokens is not None:
            max_length = prompt_length + self.max_new_tokens
        else:
            max_length = self.max_length if self.max_length is not None else DEFAULT_MAX_LENGTH
        if max_length <= prompt_length:
            raise ValueError(
                f"max_length={max_length} leaves no room after a prompt of {prompt_length} tokens; "
                "raise max_length or use max_new_tokens"
            )
        if max_length > context:
            raise ValueError(
                f"max_length={max_length} exceeds the model's context of {context} positions; "
                "generate fewer tokens or shorten the prompt"
            )
        if self.min_new_tokens > max_length - prompt_length:
            raise ValueError(
                f"min_new_tokens={self.min_new_tokens} is more than the {max_length - prompt_length} new tokens "
                "allowed; lower it or raise max_new_tokens"
            )
        return max_length
