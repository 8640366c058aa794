"""OpenAI's response objects for one request: ``text_completion`` / ``chat.completion``, whole or as the chunks of
a stream (``chat.completion.chunk``; a completion's chunks keep ``text_completion``), with ``usage``."""

from __future__ import annotations

import secrets
import time

from glassformer.serving.scheduler import Event


class Reply:
    """OpenAI's response objects for one request: ``text_completion`` or ``chat.completion`` (and their chunks)."""

    def __init__(self, kind: str, model: str):
        self.kind, self.model = kind, model
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + secrets.token_hex(12)
        self.created = int(time.time())

    def _envelope(self, chunk: bool) -> dict:
        kind = {"chat": "chat.completion", "completion": "text_completion"}[self.kind]
        return {"id": self.id, "object": kind + (".chunk" if chunk and self.kind == "chat" else ""),
                "created": self.created, "model": self.model}  # fmt: skip

    def first_chunk(self) -> dict | None:
        if self.kind != "chat":
            return None
        choice = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        return {**self._envelope(True), "choices": [choice]}

    def chunk(self, text: str, finish_reason: str | None = None) -> dict:
        if self.kind == "chat":
            choice = {"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}
        return {**self._envelope(True), "choices": [choice]}

    def usage_chunk(self, event: Event) -> dict:
        return {**self._envelope(True), "choices": [], "usage": _usage(event)}

    def whole(self, text: str, event: Event) -> dict:
        if self.kind == "chat":
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": event.finish_reason,
            }
        else:
            choice = {"index": 0, "text": text, "finish_reason": event.finish_reason, "logprobs": None}
        return {**self._envelope(False), "choices": [choice], "usage": _usage(event)}


def _usage(event: Event) -> dict:
    return {
        "prompt_tokens": event.prompt_tokens,
        "completion_tokens": event.completion_tokens,
        "total_tokens": event.prompt_tokens + event.completion_tokens,
    }
