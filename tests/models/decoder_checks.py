"""Checks shared by the GPT-2 and Llama tests of the decoder-only model."""

import torch


def left_padded(rows: list[torch.Tensor], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of different lengths as one left-padded batch: ``(ids, attention_mask)``."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :], mask[i, width - len(row) :] = row, 1
    return ids, mask


def left_padded_logits_difference(hf_model, model, ids: torch.Tensor) -> float:
    """Largest |logit difference| at the real tokens of ``ids`` with its second row's first 4 tokens padded."""
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        theirs = hf_model(ids, attention_mask=mask, position_ids=positions).logits
        ours = model(ids, attention_mask=mask)
    return (theirs - ours)[mask.bool()].abs().max().item()


def assert_batched_equals_one_by_one(model, rows: list[torch.Tensor], batched: torch.Tensor, pad: int = 0, **kwargs):
    """Each row of a batched left-padded generation equals that prompt generated alone, then padding."""
    width = max(len(r) for r in rows)
    for i, row in enumerate(rows):
        alone = model.generate(row[None], **kwargs)[0, len(row) :]
        together = batched[i, width:]
        assert torch.equal(together[: len(alone)], alone)
        assert torch.all(together[len(alone) :] == pad)  # padded after its EOS while longer rows went on


def check_batched_generation(hf_model, model, rows: list[torch.Tensor], **kwargs) -> None:
    """Batched left-padded generation equals transformers' on the same batch and each prompt generated alone."""
    ids, mask = left_padded(rows)
    batched = model.generate(ids, attention_mask=mask, **kwargs)
    assert torch.equal(batched, hf_model.generate(ids, attention_mask=mask, do_sample=False, **kwargs))
    assert_batched_equals_one_by_one(model, rows, batched, **kwargs)
