"""Structured output's guide (llguidance) on SmolLM2's tokenizer: what it allows after a text, and the two limits it
adds to the grammar — a number's run of digits ends after MAX_DIGITS (digits in strings are never counted), a run of
whitespace after MAX_SPACE characters."""

import pytest

from glassformer.data.pretrained import resolve_shortcut
from glassformer.generation.structured import MAX_DIGITS, MAX_SPACE, Grammars
from glassformer.tokenizer import Tokenizer

SCHEMA = {
    "type": "object",
    "properties": {"s": {"type": "string"}, "x": {"type": "number"}},
    "required": ["s", "x"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def grammars():
    tokenizer = Tokenizer.from_pretrained(resolve_shortcut("smollm2"))
    return Grammars(tokenizer, 49152, [tokenizer.token_to_id("<|im_end|>")])


def guide_after(grammars, text):
    guide = grammars.json(SCHEMA)
    for token in grammars.tokenizer.tokenize_str(text):
        assert guide.allowed()[token], f"the grammar bans {grammars.token_bytes[token]!r} in {text!r}"
        guide.advance(token)
    return guide


def allows(grammars, guide, piece: bytes) -> bool:
    return bool(guide.allowed()[grammars.token_bytes.index(piece)])


def test_a_number_s_digits_end_after_max_digits_and_the_json_can_close(grammars):
    digits = "4458311818292325868929616"  # what a sampled answer once wrote until max_tokens
    short = guide_after(grammars, '{"s":"a","x":-7.' + digits[: MAX_DIGITS - 1])
    assert allows(grammars, short, b"5") and short.digits == MAX_DIGITS - 1
    long = guide_after(grammars, '{"s":"a","x":-7.' + digits[:MAX_DIGITS])
    assert not allows(grammars, long, b"5") and not long.allowed()[grammars.starts_with_digit].any()
    assert allows(grammars, long, b"}") and allows(grammars, long, b"e")  # the object closes, or an exponent
    for token in grammars.tokenizer.tokenize_str("}"):
        long.advance(token)
    assert long.matcher.is_accepting()


def test_digits_inside_strings_are_not_counted_escaped_quotes_included(grammars):
    in_string = guide_after(grammars, '{"s":"' + "1" * 30)
    assert in_string.in_string and in_string.digits == 0 and allows(grammars, in_string, b"5")
    escaped = guide_after(grammars, '{"s":"say \\"' + "2" * 30)  # \" does not end the string
    assert escaped.in_string and allows(grammars, escaped, b"5")
    after = guide_after(grammars, '{"s":"' + "3" * 30 + '","x":1')  # the string ended: the number's digit counts
    assert not after.in_string and after.digits == 1


def test_whitespace_between_tokens_ends_after_max_space_characters(grammars):
    guide = guide_after(grammars, "{\n" + "\t" * (MAX_SPACE - 2))
    assert allows(grammars, guide, b"\t") and allows(grammars, guide, b'"')
    guide.advance(grammars.token_bytes.index(b"\t"))
    assert not allows(grammars, guide, b"\t") and not allows(grammars, guide, b" ") and allows(grammars, guide, b'"')
