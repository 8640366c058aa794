"""Streamed text: never half a character, never a stop string, never text after it."""

import pytest

from glassformer import Tokenizer
from glassformer.generation.text_stream import TextStream


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.gpt2()  # byte-level BPE: "é" and emoji span several tokens


def stream_all(tokenizer, text, stop=()):
    stream = TextStream(tokenizer, tuple(stop))
    pieces, stopped = [], False
    for token in tokenizer.encode(text, add_special_tokens=False):
        piece, stopped = stream.push(token)
        pieces.append(piece)
        if stopped:
            break
    if not stopped:
        pieces.append(stream.finish())
    return pieces, stopped


def test_pieces_reassemble_the_text_and_never_split_a_character(tokenizer):
    text = "Café 🤖🎉 naïve — 日本語"
    pieces, stopped = stream_all(tokenizer, text)
    assert "".join(pieces) == text and not stopped
    assert all("\ufffd" not in piece for piece in pieces)


def test_a_stop_string_across_tokens_ends_the_text_before_it(tokenizer):
    pieces, stopped = stream_all(tokenizer, "one two three\n\nUser: four", stop=["\n\nUser:"])
    assert stopped and "".join(pieces) == "one two three"


def test_the_beginning_of_a_stop_string_is_held_back_until_decided(tokenizer):
    stream = TextStream(tokenizer, ("END",))
    sent, seen = "", []
    for token in tokenizer.encode("the E, the EN and the END of it", add_special_tokens=False):
        piece, stopped = stream.push(token)
        sent += piece
        seen.append(sent)
        if stopped:
            break
    assert stopped and sent == "the E, the EN and the "
    assert all(not s.endswith(("E", "EN")) for s in seen)  # a possible "END" was never sent before it was decided


def test_the_earliest_of_several_stop_strings_wins(tokenizer):
    pieces, stopped = stream_all(tokenizer, "alpha beta gamma delta", stop=["delta", "beta"])
    assert stopped and "".join(pieces) == "alpha "


def test_the_command_line_streams_through_the_same_text_stream(tokenizer):
    """glassformer generate / chat's on_tokens callback writes only settled pieces, which add up to the text."""
    import torch

    from glassformer.cli.generate import text_streamer

    written = []
    streamer = text_streamer(tokenizer, written.append)
    text = "Café 🤖 naïve"
    for token in tokenizer.encode(text, add_special_tokens=False):
        streamer(torch.tensor([token]))
    assert "".join(written) == text and all("\ufffd" not in piece for piece in written)
    assert streamer.tokens == tokenizer.encode(text, add_special_tokens=False)
