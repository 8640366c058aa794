"""Learning-rate schedules, as a multiplier of the peak learning rate at optimizer step ``step`` (1-based).

constant:  1 after a linear warm-up
cosine:    linear warm-up to 1, then cosine decay to min_ratio at total_steps
linear:    linear warm-up to 1, then linear decay to min_ratio at total_steps (BERT's fine-tuning schedule, with
           min_ratio 0)
noam:      the paper's  d_model^-0.5 · min(step^-0.5, step · warmup^-1.5), scaled so that its peak
           (at step = warmup) is 1; the peak learning rate then plays the role of the paper's scale factor
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine", "linear", "noam")


def lr_multiplier(step: int, schedule: str, warmup_steps: int, total_steps: int, min_ratio: float = 0.1) -> float:
    step = max(step, 1)
    warmup = max(warmup_steps, 1)
    if schedule == "noam":
        return min(step**-0.5, step * warmup**-1.5) / warmup**-0.5
    if step < warmup:
        return step / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "linear":
        progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
        return min_ratio + (1 - min_ratio) * (1 - progress)
    raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
