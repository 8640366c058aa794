"""The decoding step: the scores of each row's next token, given one new token per row and the cache of the rows
so far. Chosen once per model, before decoding, and never by ``model.forward``, which always runs the modules:

    modules   ``model(ids, attention_mask=..., cache=..., last_token_only=True)`` — every model; the reference
    fused     ``fused_step.step(model, ids, cache, attention_mask)`` — every layer in one torch operator
              (``glassformer.backends.cpu.decoder``): a quantized Llama- or GPT-2-style GPT, or an encoder-decoder's
              decoder (translation), on the CPU, in float32, where the operator works here (``glassformer env``:
              "decoding step")

The server's scheduler also runs *mixed* steps (``DecodingStep.mixed``): its running requests' next tokens and
chunks of the prompts it is reading, each a slot of its ``SlotCache`` — fused, every token a row of one operator
call (chunked prefill inside the decoding step); through the modules, the decoding rows as one batch and each chunk
on its own.

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
from glassformer.nn.quantization import KERNEL_ROWS

# The most rows a fused mixed step should take: as many as the quantized kernel multiplies about as fast as the float
# tiles (KERNEL_ROWS). More would read a prompt no faster per token and hold the decoding rows beside it longer
# (README, "Prompts inside the decoding step").
MIXED_ROWS = KERNEL_ROWS
KINDS = {"modules": "the modules (model.forward)", "fused": "fused CPU step (every layer in one torch operator)"}


@dataclasses.dataclass
class DecodingStep:
    """``step(ids, attention_mask, cache)``: the next token's scores ``(batch, vocab)`` in float32, the cache
    advanced. ``kind``: ``modules`` or ``fused``. ``row_limit``: where fused, the most rows a mixed step (``mixed``:
    decoding rows and prompt chunks together, the server's) should take; 0 where the scheduler should read prompts in
    passes of their own."""

    model: torch.nn.Module
    kind: str
    row_limit: int = 0  # fused: the most rows a mixed step should take (MIXED_ROWS); else 0

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

    def mixed(self, parts: list[tuple[int, list[int]]], cache) -> torch.Tensor:
        """Scores ``(len(parts), vocab)`` in float32 of the last token of each part — a slot of a server's
        ``SlotCache`` and its next tokens (one for a request decoding, a chunk for a prompt being read), the slots
        advanced. Fused: every token a row of one step (``fused_step.mixed``); else the one-token parts as one
        batch and each longer part on its own, through the modules."""
        if self.kind == "fused":
            logits = fused_step.mixed(self.model, cache, parts)
            if logits is not None:
                return logits.float()
        single = [i for i, (_, tokens) in enumerate(parts) if len(tokens) == 1]
        logits: list[torch.Tensor | None] = [None] * len(parts)
        if single:
            view = cache.view([parts[i][0] for i in single])
            ids = torch.tensor([parts[i][1] for i in single], device=view.write_at.device)
            for i, row in zip(single, self(ids, view.attention_mask(1), view), strict=True):
                logits[i] = row
        for i, (slot, tokens) in enumerate(parts):
            if logits[i] is None:
                view = cache.view([slot])
                ids = torch.tensor([tokens], device=view.write_at.device)
                logits[i] = self.model(ids, cache=view, last_token_only=True)[0, -1].float()
        return torch.stack(logits)

    def describe(self) -> str:
        return KINDS[self.kind]


def choose_step(model: torch.nn.Module) -> DecodingStep:
    """The step for ``model``: fused where it takes the model here, else the modules."""
    parameter = next(model.parameters(), None)
    fused = parameter is not None and parameter.device.type == "cpu" and fused_step.takes(model)
    return DecodingStep(model, "fused", MIXED_ROWS) if fused else DecodingStep(model, "modules")
