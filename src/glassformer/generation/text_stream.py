"""From generated token ids to the text a reader receives, piece by piece: the one incremental text streamer, for the
server's streamed answers (SSE) and the command line's (``glassformer generate``, ``chat``).

A token is often part of a character (byte-level BPE splits "é" or an emoji across tokens) and a stop string can
span tokens, so the text is decoded from every token so far and only what is settled is sent:

- nothing while the text ends in U+FFFD (a character whose remaining bytes are still to come);
- nothing that could be the beginning of a stop string (the longest tail of the text that a stop string starts
  with is held back until the next token decides);
- a stop string found: the text up to it is sent, the stop string itself never.
"""

from __future__ import annotations

from glassformer.tokenizer import Tokenizer

INCOMPLETE = "\ufffd"


class TextStream:
    """The text of a growing list of token ids, released in settled pieces (see the module docstring)."""

    def __init__(self, tokenizer: Tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.tokens: list[int] = []
        self.sent = 0  # characters of the text already released
        self.text = ""

    def push(self, token: int) -> tuple[str, bool]:
        """Add one token; returns ``(new settled text, whether a stop string ended the text)``."""
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if text.endswith(INCOMPLETE):
            return "", False
        self.text = text
        found = [i for i in (text.find(s, self.sent) for s in self.stop) if i >= 0]
        if found:
            end = min(found)
            piece, self.sent = text[self.sent : end], end
            self.text = text[:end]
            return piece, True
        end = len(text) - self._held_back(text)
        piece, self.sent = text[self.sent : end], max(self.sent, end)
        return piece, False

    def finish(self) -> str:
        """The rest of the text when generation ends for another reason (end of sequence, length)."""
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        piece, self.sent, self.text = text[self.sent :], len(text), text
        return piece

    def _held_back(self, text: str) -> int:
        """The length of the longest tail of ``text`` (after what was sent) that some stop string begins with."""
        longest = 0
        for stop in self.stop:
            for k in range(min(len(stop) - 1, len(text) - self.sent), longest, -1):
                if text.endswith(stop[:k]):
                    longest = k
                    break
        return longest
