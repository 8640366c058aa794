"""Log-probabilities in OpenAI's two shapes, from the scheduler's ``(token id, log-probability, [(id, log-prob)])``
per generated token (the model's distribution: log-softmax of its logits, before temperature and penalties).

    chat          {"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}]}
    completions   {"tokens", "token_logprobs", "top_logprobs": [{token: logprob}], "text_offset"}

A token's text is its bytes decoded (a byte-level BPE token may hold part of a character: its ``bytes`` say which,
its ``token`` shows U+FFFD there).
"""

from __future__ import annotations

import functools

from tokenizers import decoders

from glassformer.tokenizer import Tokenizer


@functools.cache
def _byte_of() -> dict[str, int]:
    """GPT-2's byte-level alphabet inverted: the character a byte-level BPE token shows -> the byte it stands for
    (printable bytes stand for themselves; the others were moved to 256 + i, in order)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shown = {b: chr(b) for b in printable}
    for moved, b in enumerate(b for b in range(256) if b not in shown):
        shown[b] = chr(256 + moved)
    return {c: b for b, c in shown.items()}


class TokenText:
    """``(text, bytes)`` of each token id of a tokenizer, remembered."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.byte_level = isinstance(tokenizer.backend.decoder, decoders.ByteLevel)
        self.known: dict[int, tuple[str, list[int]]] = {}

    def __call__(self, token_id: int) -> tuple[str, list[int]]:
        if token_id not in self.known:
            piece = self.tokenizer.backend.id_to_token(token_id) or ""
            byte_of = _byte_of()
            if self.byte_level and all(c in byte_of for c in piece):
                raw = bytes(byte_of[c] for c in piece)
            else:
                raw = self.tokenizer.decode([token_id]).encode("utf-8")
            self.known[token_id] = (raw.decode("utf-8", errors="replace"), list(raw))
        return self.known[token_id]


def chat_logprobs(entries: list, text_of: TokenText) -> dict:
    """OpenAI's chat ``logprobs`` object for the tokens of ``entries``."""

    def item(token_id: int, logprob: float) -> dict:
        token, raw = text_of(token_id)
        return {"token": token, "logprob": logprob, "bytes": raw}

    return {
        "content": [
            {**item(token_id, logprob), "top_logprobs": [item(i, lp) for i, lp in top]}
            for token_id, logprob, top in entries
        ]
    }


def completion_logprobs(entries: list, text_of: TokenText, offset: int) -> tuple[dict, int]:
    """OpenAI's completions ``logprobs`` object for ``entries``, their text starting at character ``offset`` of the
    choice's text; and the offset after them."""
    tokens, offsets = [], []
    for token_id, _, _ in entries:
        token = text_of(token_id)[0]
        tokens.append(token)
        offsets.append(offset)
        offset += len(token)
    top = [{text_of(i)[0]: lp for i, lp in alternatives} for _, _, alternatives in entries]
    body = {"tokens": tokens, "token_logprobs": [lp for _, lp, _ in entries], "top_logprobs": top,
            "text_offset": offsets}  # fmt: skip
    return body, offset
