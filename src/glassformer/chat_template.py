"""Chat: a conversation rendered with the checkpoint's chat template, then continued by the model.

An instruction-tuned model was trained on conversations written in one fixed format, e.g. SmolLM2's

    <|im_start|>system\\nYou are a helpful AI assistant ...<|im_end|>\\n<|im_start|>user\\nHi<|im_end|>\\n
    <|im_start|>assistant\\n

and it answers only when prompted the same way. The format ships with the checkpoint as a Jinja template (GGUF
metadata ``tokenizer.chat_template``, or ``tokenizer_config.json``); it is rendered here as ``transformers``
renders it: a sandboxed Jinja environment with ``trim_blocks`` and ``lstrip_blocks``, ``messages``,
``add_generation_prompt``, the special tokens, and the helpers ``raise_exception`` and ``strftime_now``.
"""

from __future__ import annotations

import datetime
import json
from functools import lru_cache

ROLES = ("system", "user", "assistant")


def _raise_exception(message: str):
    raise ValueError(f"the chat template refused the conversation: {message}")


@lru_cache(maxsize=8)
def _compile(template: str):
    from jinja2.exceptions import TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, indent=indent, ensure_ascii=False)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except TemplateSyntaxError as e:
        raise ValueError(f"the checkpoint's chat template is not valid Jinja: {e}") from e


def render_chat_template(
    template: str,
    messages: list[dict[str, str]],
    add_generation_prompt: bool = True,
    **special_tokens: str | None,
) -> str:
    """Render ``messages`` (each ``{"role": "system" | "user" | "assistant", "content": str}``) with ``template``."""
    if not messages:
        raise ValueError("the conversation is empty; give at least one message")
    for i, message in enumerate(messages):
        if (
            not isinstance(message, dict)
            or message.get("role") not in ROLES
            or not isinstance(message.get("content"), str)
        ):
            raise ValueError(f"message {i} must be a dict with a role in {ROLES} and a string content, got {message!r}")
    return _compile(template).render(messages=messages, add_generation_prompt=add_generation_prompt, **special_tokens)
