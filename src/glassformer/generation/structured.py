"""Structured output: at each step, the tokens that keep the answer a prefix of JSON matching a schema.

The grammar engine is llguidance (Microsoft's, the one vLLM and SGLang use): it compiles a JSON schema into a
grammar in about a millisecond and computes the allowed tokens of a 49,152-token vocabulary in ~80 µs per step
on the CPU (SmolLM2's tokenizer; outlines-core's token list took ~415 µs: measured with both at hand). The batched
sampler applies a row's mask (``Sampling.guides``) with the other constraints: a banned token's score is -inf.
When the JSON is complete, only an end-of-sequence token is allowed, so the answer ends there.

    grammars = Grammars(tokenizer, vocab_size, eos_token_ids)   # once per tokenizer (~0.3 s)
    guide = grammars.json(schema)                               # None: any JSON object; a bad schema: ValueError
    guide.allowed()  -> (vocab,) bool                           # before each step
    guide.advance(token)                                        # after it
"""

from __future__ import annotations

import json

import llguidance
import torch

from glassformer.tokenizer import Tokenizer


class Grammars:
    """llguidance's view of a tokenizer (every token's bytes), for the guides of one model."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, eos_token_ids: list[int]):
        self.vocab_size = vocab_size
        self.tokenizer = llguidance.LLTokenizer(
            tokenizer.backend.to_str(), n_vocab=vocab_size, eos_token=list(eos_token_ids)
        )

    def json(self, schema: dict | None = None) -> Guide:
        """A guide to JSON matching ``schema`` (None: any JSON object); a schema llguidance cannot use is a
        one-line ``ValueError`` with its reason."""
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            json.dumps({"type": "object"} if schema is None else schema)
        )
        error = llguidance.LLMatcher.validate_grammar(grammar, self.tokenizer)
        if error and not error.startswith("WARNING"):
            raise ValueError(f"the JSON schema cannot be used: {error.splitlines()[0]}")
        return Guide(llguidance.LLMatcher(self.tokenizer, grammar), self.vocab_size)


class Guide:
    """One answer's grammar state."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int):
        self.matcher, self.vocab_size = matcher, vocab_size

    def allowed(self) -> torch.Tensor:
        """``(vocab,)`` bool: the tokens the grammar allows next."""
        bias = self.matcher.compute_logit_bias()  # one byte per token: 0 banned, 200 allowed
        return torch.frombuffer(bytearray(bias), dtype=torch.uint8)[: self.vocab_size] > 0

    def advance(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise RuntimeError(f"the grammar refused token {token}: {self.matcher.get_error()}")
