"""How to train: ``TrainConfig``, every choice of the training loop in one dataclass, checked when it is made."""

from __future__ import annotations

import dataclasses

from glassformer import runtime
from glassformer.options import check_fields
from glassformer.training import distributed
from glassformer.training.schedules import SCHEDULES

OPTIMIZERS = ("adam", "adamw", "muon")


@dataclasses.dataclass
class TrainConfig:
    """How to train. ``max_minutes`` stops on wall-clock time (then evaluates and saves), counted over the whole run
    (a resumed run finishes its minutes); ``schedule_steps`` sets the length of the learning-rate schedule when a
    run is meant to stop and resume before its end. Under ``max_minutes`` a decaying schedule (cosine, linear,
    warmdown) follows whichever is further along, the steps or the minutes, so that it ends when the time does.

    ``optimizer``: "adam", "adamw" or "muon" (Muon for the blocks' matrices at peak ``muon_lr`` (default ``lr``)
    with momentum ``muon_momentum``, AdamW for the rest; ``glassformer.training.optimizers``). ``schedule``
    "warmdown": warm-up, constant, then a linear decay to ``min_lr_ratio`` over the last ``warmdown_fraction`` of
    the run (``glassformer.training.schedules``)."""

    max_steps: int = 1000
    max_minutes: float | None = None
    schedule_steps: int | None = None  # length of the lr schedule; default max_steps
    lr: float = 1e-3
    schedule: str = "cosine"
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    optimizer: str = "adamw"
    muon_lr: float | None = None
    muon_momentum: float = 0.95
    warmdown_fraction: float = 0.3
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float | None = 1.0
    grad_accum: int = 1
    eval_every: int = 200
    log_every: int = 10
    best_metric: str = "valid_loss"  # lower is better for *loss / *ppl, higher for anything else
    patience: int | None = None  # stop after this many evaluations without a better best_metric
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:N, mps
    precision: str = "auto"  # auto, fp32, bf16 (autocast), fp16 (autocast + gradient scaling)
    compile: bool = False  # torch.compile the model's forward (dynamic shapes)
    parallel: str = "ddp"  # with several processes (torchrun): ddp (replicas) or fsdp (sharded, FSDP2)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.precision not in ("auto", *runtime.PRECISIONS):
            raise ValueError(f"unknown precision {self.precision!r}; choose auto, fp32, bf16 or fp16")
        check_fields(self)  # every field's type and range (glassformer.options.RULES)
        runtime.resolve_device(self.device)  # a device that is not there: refused before any work
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {SCHEDULES}")
        if self.parallel not in distributed.PARALLEL:
            raise ValueError(f"unknown parallel strategy {self.parallel!r}; choose one of {distributed.PARALLEL}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.optimizer == "muon" and self.parallel == "fsdp":
            raise ValueError("Muon orthogonalizes whole matrices, which --parallel fsdp shards; use ddp with muon")
        if len(self.betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {self.betas!r}")

    @property
    def lower_is_better(self) -> bool:
        return self.best_metric.endswith(("loss", "ppl"))
