"""OpenAI's response objects for one request: ``text_completion`` / ``chat.completion``, whole or as the chunks of
a stream (``chat.completion.chunk``; a completion's chunks keep ``text_completion``), with ``n`` choices (each
chunk carries its choice's ``index``), ``logprobs`` where asked, and ``usage``."""

from __future__ import annotations

import secrets
import time

from glassformer.serving.logprobs import TokenText, chat_logprobs, completion_logprobs
from glassformer.serving.requests import Event


class Reply:
    """OpenAI's response objects for one request of ``n`` choices; ``text_of`` (a ``TokenText``) where logprobs
    were asked."""

    def __init__(self, kind: str, model: str, n: int = 1, text_of: TokenText | None = None):
        self.kind, self.model, self.n, self.text_of = kind, model, n, text_of
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + secrets.token_hex(12)
        self.created = int(time.time())
        self.offsets = [0] * n  # each completion choice's text so far, in characters (logprobs' text_offset)

    def _envelope(self, chunk: bool) -> dict:
        kind = {"chat": "chat.completion", "completion": "text_completion"}[self.kind]
        return {"id": self.id, "object": kind + (".chunk" if chunk and self.kind == "chat" else ""),
                "created": self.created, "model": self.model}  # fmt: skip

    def _logprobs(self, index: int, entries: list) -> dict | None:
        if self.text_of is None:
            return None
        if self.kind == "chat":
            return chat_logprobs(entries, self.text_of)
        body, self.offsets[index] = completion_logprobs(entries, self.text_of, self.offsets[index])
        return body

    def first_chunks(self) -> list[dict]:
        """A chat stream opens each choice with the assistant's role."""
        if self.kind != "chat":
            return []
        return [
            {
                **self._envelope(True),
                "choices": [
                    {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
                ],
            }  # fmt: skip
            for i in range(self.n)
        ]

    def chunk(self, index: int, event: Event) -> dict:
        """The chunk of a ``text`` or ``done`` event of choice ``index``."""
        text, logprobs = event.text, self._logprobs(index, event.logprobs)
        if self.kind == "chat":
            choice = {"index": index, "delta": {"content": text} if text else {}, "logprobs": logprobs}
        else:
            choice = {"index": index, "text": text, "logprobs": logprobs}
        return {**self._envelope(True), "choices": [{**choice, "finish_reason": event.finish_reason}]}

    def usage_chunk(self, done: list[Event]) -> dict:
        return {**self._envelope(True), "choices": [], "usage": _usage(done)}

    def whole(self, texts: list[str], done: list[Event], entries: list[list]) -> dict:
        """The whole answer: choice i's text, its ``done`` event and its logprob entries."""
        choices = []
        for i, (text, event) in enumerate(zip(texts, done, strict=True)):
            logprobs = self._logprobs(i, entries[i])
            if self.kind == "chat":
                message = {"role": "assistant", "content": text}
                choices.append({"index": i, "message": message, "logprobs": logprobs})
            else:
                choices.append({"index": i, "text": text, "logprobs": logprobs})
            choices[-1]["finish_reason"] = event.finish_reason
        return {**self._envelope(False), "choices": choices, "usage": _usage(done)}


def _usage(done: list[Event]) -> dict:
    """The prompt once, the completion tokens of every choice."""
    prompt, completion = done[0].prompt_tokens, sum(e.completion_tokens for e in done)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
