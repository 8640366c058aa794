"""Structured output: at each step, the tokens that keep the answer a prefix of JSON matching a schema.

The grammar engine is llguidance (Microsoft's, the one vLLM and SGLang use): it compiles a JSON schema into a
grammar in about a millisecond and computes the allowed tokens of a 49,152-token vocabulary in ~80 µs per step
on the CPU (SmolLM2's tokenizer; outlines-core's token list took ~415 µs: measured with both at hand). The batched
sampler applies a row's mask (``Sampling.guides``) with the other constraints: a banned token's score is -inf.
When the JSON is complete, only an end-of-sequence token is allowed, so the answer ends there.

A grammar ends every value but a number: JSON numbers have no length limit, and a small model sampling digits can
write one until ``max_tokens`` cuts the answer mid-JSON ("-7.4458311818292325868929616..." was 1 answer of 100 in
``bench/structured.py``). So a run of ``MAX_DIGITS`` digits outside a string ends there: the tokens that start with
a digit are banned until something else comes (``,``, ``}``, ``]``, an exponent), where the grammar allows another
token. 20 digits hold any 64-bit integer, and more than float64's 17 significant digits change no value a JSON
parser reads; digits inside strings are never counted. For the same reason a run of whitespace between two JSON
tokens is at most ``MAX_SPACE`` characters (llguidance's ``whitespace_pattern``; its default has no bound, and tabs
until ``max_tokens`` were 2 answers of 300): room for a newline and any indentation a person would write.

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

MAX_DIGITS = 20  # the longest run of digits a number may have (module docstring)
MAX_SPACE = 32  # the longest run of whitespace between two JSON tokens
JSON_OPTIONS = {"whitespace_pattern": rf"[\x20\x0A\x0D\x09]{{1,{MAX_SPACE}}}"}  # a schema's x-guidance may change it
DIGITS = frozenset(b"0123456789")


class Grammars:
    """llguidance's view of a tokenizer (every token's bytes), for the guides of one model."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, eos_token_ids: list[int]):
        self.vocab_size = vocab_size
        self.tokenizer = llguidance.LLTokenizer(
            tokenizer.backend.to_str(), n_vocab=vocab_size, eos_token=list(eos_token_ids)
        )
        self.token_bytes = [self.tokenizer.decode_bytes([t]) for t in range(vocab_size)]
        self.starts_with_digit = torch.tensor([b[:1] != b"" and b[0] in DIGITS for b in self.token_bytes])

    def json(self, schema: dict | None = None) -> Guide:
        """A guide to JSON matching ``schema`` (None: any JSON object); a schema llguidance cannot use is a
        one-line ``ValueError`` with its reason."""
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            json.dumps({"type": "object"} if schema is None else schema), defaults=JSON_OPTIONS
        )
        error = llguidance.LLMatcher.validate_grammar(grammar, self.tokenizer)
        if error and not error.startswith("WARNING"):
            raise ValueError(f"the JSON schema cannot be used: {error.splitlines()[0]}")
        return Guide(llguidance.LLMatcher(self.tokenizer, grammar), self)


class Guide:
    """One answer's grammar state, and where its text stands: inside a string or not, the digits it ends with."""

    def __init__(self, matcher: llguidance.LLMatcher, grammars: Grammars):
        self.matcher, self.grammars = matcher, grammars
        self.in_string = self.escaped = False
        self.digits = 0  # the run of digits the text ends with, outside strings

    def allowed(self) -> torch.Tensor:
        """``(vocab,)`` bool: the tokens the grammar allows next (less those starting with a digit after a run of
        ``MAX_DIGITS``, where that leaves any)."""
        bias = self.matcher.compute_logit_bias()  # one byte per token: 0 banned, 200 allowed
        allowed = torch.frombuffer(bytearray(bias), dtype=torch.uint8)[: self.grammars.vocab_size] > 0
        if self.digits >= MAX_DIGITS:
            ended = allowed & ~self.grammars.starts_with_digit
            if ended.any():
                return ended
        return allowed

    def advance(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise RuntimeError(f"the grammar refused token {token}: {self.matcher.get_error()}")
        for byte in self.grammars.token_bytes[token]:
            if self.in_string:  # a string ends at an unescaped quote
                self.escaped, self.in_string = (not self.escaped and byte == 0x5C), self.escaped or byte != 0x22
            else:
                self.in_string = byte == 0x22
                self.digits = self.digits + 1 if byte in DIGITS else 0
