"""The decoding step: the scores of each row's next token, given one new token per row and the cache of the rows
so far. Chosen once per model, before decoding, and never by ``model.forward``, which always runs the modules:

    modules   ``model(ids, attention_mask=..., cache=..., last_token_only=True)`` — every model; the reference
    fused     ``fused_step.step(model, ids, cache, attention_mask)`` — every layer in one torch operator
              (``glassformer.backends.cpu.decoder``): a quantized Llama-style GPT, on the CPU, in float32, where the
              operator works here (``glassformer env``: "decoding step")

``choose_step(model)`` asks ``fused_step.takes(model)`` once; ``generate`` and the server's scheduler
decode through what it returns, and the server prints it when it starts. Asking for attention weights (a call to
``forward``) can therefore never change the logits. The fused step declines rows it does not take — a cache row
whose mask has a hole, a cache too short — and the modules serve that step; tests compare the two step by step
(``tests/generation/test_fused_step.py``).
"""

from __future__ import annotations

import dataclasses

import torch

from glassformer.generation import fused_step

KINDS = {"modules": "the modules (model.forward)", "fused": "fused CPU step (every layer in one torch operator)"}


@dataclasses.dataclass
class DecodingStep:
    """``step(ids, attention_mask, cache)``: the next token's scores ``(batch, vocab)`` in float32, the cache
    advanced. ``kind``: ``modules`` or ``fused``."""

    model: torch.nn.Module
    kind: str

    def __call__(self, ids: torch.Tensor, attention_mask: torch.Tensor | None, cache) -> torch.Tensor:
        if self.kind == "fused" and cache is not None and ids.size(1) == 1:
            logits = fused_step.step(self.model, ids, cache, attention_mask)
            if logits is not None:
                return logits[:, -1].float()
        return self.model(ids, attention_mask=attention_mask, cache=cache, last_token_only=True)[:, -1].float()

    def block(self, ids: torch.Tensor, cache) -> torch.Tensor:
        """Scores ``(n, vocab)`` in float32 of every position of ``ids`` ``(1, n)``, one sequence's next tokens run
        as one block after its cache (speculative decoding's check), the cache advanced by n."""
        if self.kind == "fused":
            logits = fused_step.block(self.model, ids, cache)
            if logits is not None:
                return logits.float()
        return self.model(ids, cache=cache)[0].float()

    def describe(self) -> str:
        return KINDS[self.kind]


def choose_step(model: torch.nn.Module) -> DecodingStep:
    """The step for ``model``: fused where it takes the model here, else the modules."""
    parameter = next(model.parameters(), None)
    fused = parameter is not None and parameter.device.type == "cpu" and fused_step.takes(model)
    return DecodingStep(model, "fused" if fused else "modules")
