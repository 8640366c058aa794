"""Checks shared by the GPT-2 and Llama tests of the decoder-only model."""

import torch
from equivalence import assert_close_in, assert_same_greedy_tokens, next_scores


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


def check_decoding_equivalences(model, precision: str, rows: list[torch.Tensor], **options) -> None:
    """In ``precision`` (``model`` already in it): the four routes of greedy decoding agree as ``equivalence`` says —
    the scores of a prompt fed token by token through the cache and of the full pass; a left-padded batch's scores
    and each prompt's alone; greedy tokens with the cache and without, batched and alone, with packed weights and
    without."""
    depth = model.config.num_layers
    longest = rows[0]
    with torch.no_grad():
        full = model(longest[None])
        cache = model.make_cache(1, len(longest))
        steps = [model(longest[None, :3], cache=cache)] + [model(longest[None, t : t + 1], cache=cache)
                                                          for t in range(3, len(longest))]  # fmt: skip
        assert_close_in(precision, depth, torch.cat(steps, 1), full)
        ids, mask = left_padded(rows)
        batched_scores = model(ids, attention_mask=mask)
        for i, row in enumerate(rows):
            assert_close_in(precision, depth, batched_scores[i, ids.size(1) - len(row) :], model(row[None])[0])

    batched = model.generate(ids, attention_mask=mask, **options)
    for i, row in enumerate(rows):
        alone = model.generate(row[None], **options)[0, len(row) :]
        uncached = model.generate(row[None], use_cache=False, **options)[0, len(row) :]
        packed = model.generate(row[None], pack_weights=True, **options)[0, len(row) :]
        plain = model.generate(row[None], pack_weights=False, **options)[0, len(row) :]
        together = batched[i, ids.size(1) :][: len(alone)]
        scores = next_scores(model, row)
        assert_same_greedy_tokens(scores, together, alone, precision, depth, f"row {i} batched / alone")
        assert_same_greedy_tokens(scores, alone, uncached, precision, depth, f"row {i} cached / uncached")
        assert_same_greedy_tokens(scores, packed, plain, precision, depth, f"row {i} packed / plain weights")
