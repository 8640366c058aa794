"""Training jobs that tests/training/test_distributed.py runs on one process (in pytest) and on two (this file run
by torchrun): ``torchrun --nproc-per-node 2 distributed_jobs.py PLAN.json`` runs each job of the plan in order,
in one process group, with the library's own entry points."""

import json
import sys
from pathlib import Path

from glassformer.training.classification import LabelledData, classification_train_config, train_classifier
from glassformer.training.lm import lm_train_config, train_language_model
from glassformer.training.translation import DataSpec, train_translation, translation_train_config

MACHINE = dict(device="cpu", progress=False)
LM_MODEL = dict(d_model=32, num_layers=2, num_heads=4, d_ff=64, max_seq_length=16, dropout=0.0, attention_dropout=0.0)


def run_job(job: dict) -> dict:
    """One job: ``{"task": "lm" | "translate" | "classify", "out", "data", "init", "parallel", "max_steps",
    "schedule_steps", "resume", "precision", "recipe"}`` (precision fp32 and recipe paper unless named); every run
    takes 2 accumulated micro-batches per step, without dropout."""
    steps = dict(max_steps=job.get("max_steps", 4), schedule_steps=job.get("schedule_steps"))
    machine = dict(**MACHINE, precision=job.get("precision", "fp32"))
    common = dict(**machine, grad_accum=2, parallel=job.get("parallel", "ddp"), seed=3)
    resume = job.get("resume", False)
    if job["task"] == "lm":
        recipe = job.get("recipe", "paper")
        train = lm_train_config(recipe, **steps, **common, lr=3e-3, warmup_steps=1, eval_every=4)
        return train_language_model(job["out"], job["data"], "char", model_fields=LM_MODEL, batch_size=4,
                                    train=train, resume=resume, recipe=recipe)  # fmt: skip
    if job["task"] == "translate":
        train = translation_train_config(**steps, **common, lr=3e-3, warmup_steps=1, eval_every=4)
        return train_translation(
            job["out"], DataSpec(job["data"]), "tiny", dict(dropout=0.0, attention_dropout=0.0), vocab_size=120,
            max_tokens=96, train=train, resume=resume,
        )  # fmt: skip
    train = classification_train_config(**common, lr=3e-3, patience=None)
    return train_classifier(job["out"], LabelledData(job["data"]), init=job["init"], epochs=0.25, batch_size=8,
                            max_length=16, dropout=0.0, train=train, resume=resume)  # fmt: skip


if __name__ == "__main__":
    import torch.distributed as dist

    dist.init_process_group("gloo")  # once for every job: the library joins a group only where none is joined
    for job in json.loads(Path(sys.argv[1]).read_text()):
        run_job(job)
    dist.destroy_process_group()
