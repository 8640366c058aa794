"""Equivalence in a named precision: two routes to the same answer (cached / uncached, batched / alone, packed /
plain, the server's slots / generate) compared as ``glassformer.tolerance`` says two roundings may differ.

Scores compare within ``tolerance(precision, depth)``. Greedy tokens compare exactly, except where two roundings can
honestly disagree: at a near-tie, a step whose two candidate tokens score within that tolerance (relative to the
largest score there) of each other. So
two greedy continuations pass when they are equal, or when they first part at such a step (after which they
continue from different text and are not compared further). In float32 the tolerance is ~1e-5, so only a true
tie may part them; in bfloat16 it is ~3e-2 a layer, and tiny random models, whose scores are close together, do
part there now and then.
"""

import torch

from glassformer import runtime
from glassformer.tolerance import tolerance

PRECISIONS = ["fp32", "bf16"]  # the precisions every equivalence of decoding is claimed (and tested) in


def in_precision(model, precision: str):
    """``model`` itself for fp32, else a copy with its weights in that precision (how inference runs in it:
    ``runtime.place_model``)."""
    import copy

    return model if precision == "fp32" else copy.deepcopy(model).to(runtime.PRECISIONS[precision])


def next_scores(model, prompt: torch.Tensor):
    """For a decoder-only ``model``: the function from the tokens chosen so far (a list) to the scores of the next
    token after ``prompt`` (1-D ids), computed by the full pass."""

    def scores(chosen: list[int]) -> torch.Tensor:
        context = torch.cat([torch.as_tensor(prompt), torch.tensor(chosen, dtype=torch.long)])
        with torch.no_grad():
            return model(context[None])[0, -1]

    return scores


def assert_close_in(precision: str, depth: int, actual, expected, **kwargs) -> None:
    """``torch.testing.assert_close`` with ``tolerance(precision, depth)``, comparing in float32."""
    torch.testing.assert_close(actual.float(), expected.float(), **tolerance(precision, depth), **kwargs)


def assert_same_greedy_tokens(scores, a, b, precision: str, depth: int, what: str = "") -> None:
    """``a`` and ``b`` (new tokens) were both chosen greedily, by two routes, from the scores that ``scores(chosen)``
    gives for the next token after ``chosen``: equal, or parting first at a near-tie of those scores in
    ``precision`` through ``depth`` layers (module docstring)."""
    a, b = torch.as_tensor(a).tolist(), torch.as_tensor(b).tolist()
    step = next((t for t, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
    if step is None:
        assert len(a) == len(b), f"{what}: one continuation is longer ({len(a)} vs {len(b)} tokens)"
        return
    at = scores(a[:step]).float()
    gap = (at[a[step]] - at[b[step]]).abs().item()
    bound = tolerance(precision, depth)["rtol"] * at.abs().max().item()  # relative to the scale of the scores there
    assert gap <= bound, (
        f"{what}: the two routes part at new token {step} ({a[step]} vs {b[step]}), whose scores are {gap:.3g} "
        f"apart: more than {precision}'s tolerance {bound:.3g}, so not a near-tie"
    )
