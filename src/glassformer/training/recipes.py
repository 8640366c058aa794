"""Training recipes: ``paper`` and ``fast`` — what a run changes from its task's defaults, as model fields and
``TrainConfig`` fields.

    paper   the task's own defaults: for translation the paper's (Adam β = (0.9, 0.98), ε = 1e-9, its warm-up
            schedule), for a language model nanoGPT's (AdamW, warm-up then cosine)
    fast    the changes of the modded-nanoGPT speedrun that pay on the machine at hand, in wall-clock time
            (``bench/recipes.py`` measures each alone and together; README: the ablation table)

Each change is a field of ``BlockConfig`` or ``TrainConfig``, so a recipe is only a set of values:

    qk_norm     an RMS norm of each head's queries and keys                         BlockConfig.qk_norm
    relu2       the feed-forward's activation max(0, x)²                            BlockConfig.activation
    zero_init   W_O and W_2 start at zero: every block starts as the identity       BlockConfig.zero_init_projections
    muon        Muon for the blocks' matrices, AdamW for the rest                    TrainConfig.optimizer
    warmdown    a short warm-up, constant, then a linear decay to 0 over the last    TrainConfig.schedule
                40% of the run (the minutes', under --max-minutes)

The fast recipe's peak learning rate is its own (``FAST_LR``): Muon and a schedule that anneals to zero take a
higher peak than the paper's Adam with its slow 1/sqrt(step) decay.
"""

from __future__ import annotations

import dataclasses
from typing import Any

RECIPES = ("paper", "fast")
TASKS = ("translate", "lm")


@dataclasses.dataclass(frozen=True)
class Change:
    """One change of a recipe: the model fields and the ``TrainConfig`` fields it sets."""

    model: dict[str, Any] = dataclasses.field(default_factory=dict)
    train: dict[str, Any] = dataclasses.field(default_factory=dict)


CHANGES = {
    "qk_norm": Change(model={"qk_norm": True}),
    "relu2": Change(model={"activation": "relu2"}),
    "zero_init": Change(model={"zero_init_projections": True}),
    "muon": Change(train={"optimizer": "muon"}),
    "warmdown": Change(
        train={"schedule": "warmdown", "warmup_steps": 100, "warmdown_fraction": 0.4, "min_lr_ratio": 0.0}
    ),
}
FAST = ("qk_norm", "relu2", "zero_init", "muon", "warmdown")  # the changes that paid (bench/recipes.py)
FAST_LR = {"translate": 3e-3, "lm": 3e-3}  # the fast recipe's peak learning rate, per task


def recipe(name: str, task: str, changes: tuple[str, ...] | None = None) -> Change:
    """The model and training fields of recipe ``name`` for ``task`` ("translate" or "lm"); ``changes`` picks
    other changes than the fast recipe's (the ablation: each change alone on top of the paper recipe)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if name == "paper" and changes is None:
        return Change()
    unknown = sorted(set(changes or ()) - set(CHANGES))
    if unknown:
        raise ValueError(f"unknown change(s) {unknown}; choose from {', '.join(CHANGES)}")
    model: dict[str, Any] = {}
    train: dict[str, Any] = {}
    for change in FAST if changes is None else changes:
        model.update(CHANGES[change].model)
        train.update(CHANGES[change].train)
    if changes is None:
        train["lr"] = FAST_LR[task]
    return Change(model, train)


def check_resumed(trained_with: str, given: str) -> None:
    """A run resumes with the recipe it was trained with (the optimizer's state and the schedule belong to it)."""
    if trained_with != given:
        raise ValueError(f"this run was trained with --recipe {trained_with}; resume it with --recipe {trained_with}")
