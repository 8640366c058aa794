"""Learning-rate schedules, as a multiplier of the peak learning rate at optimizer step ``step`` (1-based).

constant:  1 after a linear warm-up
cosine:    linear warm-up to 1, then cosine decay to min_ratio at total_steps
linear:    linear warm-up to 1, then linear decay to min_ratio at total_steps (BERT's fine-tuning schedule, with
           min_ratio 0)
warmdown:  linear warm-up to 1, constant, then linear decay to min_ratio over the last ``warmdown_fraction`` of the
           run (warmup-stable-decay, the modded-nanoGPT speedrun's trapezoid): the run ends annealed whenever it
           ends, without committing to a cosine's length from the start
noam:      the paper's  d_model^-0.5 · min(step^-0.5, step · warmup^-1.5), scaled so that its peak
           (at step = warmup) is 1; the peak learning rate then plays the role of the paper's scale factor

How far along the run is — for cosine, linear and warmdown — is the larger of the steps' fraction and ``elapsed``,
the fraction of the run's time already spent (under a time limit; 0 without one), so that a run stopped by the clock
ends its decay on time.
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine", "linear", "warmdown", "noam")


def lr_multiplier(
    step: int,
    schedule: str,
    warmup_steps: int,
    total_steps: int,
    min_ratio: float = 0.1,
    warmdown_fraction: float = 0.3,
    elapsed: float = 0.0,
) -> float:
    step = max(step, 1)
    warmup = max(warmup_steps, 1)
    if schedule == "noam":
        return min(step**-0.5, step * warmup**-1.5) / warmup**-0.5
    if step < warmup:
        return step / warmup
    if schedule == "constant":
        return 1.0
    after_warmup = max((step - warmup) / max(total_steps - warmup, 1), elapsed)
    if schedule == "cosine":
        progress = min(after_warmup, 1.0)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "linear":
        progress = min(after_warmup, 1.0)
        return min_ratio + (1 - min_ratio) * (1 - progress)
    if schedule == "warmdown":
        progress = min(max(step / max(total_steps, 1), elapsed), 1.0)  # of the whole run, warm-up included
        left = (1 - progress) / warmdown_fraction if warmdown_fraction > 0 else 1.0  # 1 where the warm-down starts
        return min_ratio + (1 - min_ratio) * min(left, 1.0)
    raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
