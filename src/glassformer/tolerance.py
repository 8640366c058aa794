"""How far apart two computations of the same values may be, by the precision they ran in: stated once, used by
every equivalence test (cached = uncached, batched = alone, fused = modules, accumulated = joined, N processes = 1,
compiled = eager) and by anyone comparing two runs of a model.

Two routes to the same number — another summation order, a fused kernel, a cached prefix, a batch of another size —
round differently. A format with a p-bit significand rounds each result to within u = 2^-p of itself (its unit
roundoff):

    fp32   p = 24   u = 6.0e-8
    fp16   p = 11   u = 4.9e-4
    bf16   p = 8    u = 3.9e-3

In bfloat16 and float16 (autocast, or half-precision weights) the products accumulate in float32 and are rounded
once when written, so a layer's error is a few roundings in the precision itself; in float32 it is the rounding
inside the sums (~sqrt(K) of them for an inner size K). Per layer, on each of the two routes:

    r = depth · (8 · u(precision) + 64 · u(fp32))      fp32: 4.3e-6   fp16: 3.9e-3   bf16: 3.1e-2  per layer

8 roundings in the precision (the layer's matrix products, its norm, softmax and residual adds) and 64 float32 ones
(the sums inside them). ``tolerance(precision, depth)`` returns ``rtol = atol = r``: values near 0 are compared
absolutely at the scale of activations after a norm (≈ 1).

What a tolerance cannot cover: a greedy choice between two tokens whose scores are closer than it. Such a near-tie
can go either way on two routes, so "the same tokens" in bfloat16 means: the same, or parting first at a step where
the two tokens chosen were within the tolerance of each other (``tests/conftest.py``'s ``same_greedy_tokens``).
"""

from __future__ import annotations

UNIT_ROUNDOFF = {"fp32": 2.0**-24, "fp16": 2.0**-11, "bf16": 2.0**-8}
ROUNDINGS_PER_LAYER = 8  # in the precision itself
FLOAT32_ROUNDINGS_PER_LAYER = 64  # inside the float32 sums


def tolerance(precision: str, depth: int = 1) -> dict[str, float]:
    """``{"rtol": r, "atol": r}`` for values computed in ``precision`` (``fp32``, ``bf16``, ``fp16``) through
    ``depth`` layers by two routes (formula in the module docstring); pass it to ``torch.testing.assert_close``."""
    if precision not in UNIT_ROUNDOFF:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(UNIT_ROUNDOFF)}")
    if depth < 1:
        raise ValueError(f"depth must be a positive number of layers, not {depth}")
    r = depth * (ROUNDINGS_PER_LAYER * UNIT_ROUNDOFF[precision] + FLOAT32_ROUNDINGS_PER_LAYER * UNIT_ROUNDOFF["fp32"])
    return {"rtol": r, "atol": r}
