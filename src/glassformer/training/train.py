"""One entry point for every training run: ``train(spec, config, out)``.

A run of any kind does the same things around its own data and model — join the processes (torchrun), claim the
run directory, on ``resume`` take back the run's recorded data and settings (and refuse data files that changed),
build the task, record what it was built from, and hand it to the ``Trainer`` (``glassformer.training.loop``). The
``RunSpec`` of a kind says only what differs:

    kind, run_file         the run directory's kind and the record it keeps beside the checkpoints
    default_config()       the ``TrainConfig`` when none is given
    data_path()            the data files to fingerprint (None for a named corpus)
    restore(record)        on resume: the data and settings of the run being resumed, not the ones passed now
    build(out, resume, world, config) -> (task, config)
                           the ``Task`` (data, model, ``loss(batch)``, ``valid_batches``) and the config to train it
                           with; on resume the model and tokenizer come from ``out/last``
    record(task)           what the run was built from (written when it starts)
    summary(task)          what the caller learns beside the trainer's final step and metrics

``train_translation`` (``translation.py``), ``train_classifier`` (``classification.py``) and ``train_language_model``
(``lm.py``) are a spec each and a call to ``train``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from glassformer.training import distributed
from glassformer.training.distributed import World
from glassformer.training.loop import Task, TrainConfig, Trainer
from glassformer.training.run_directory import (
    RunDirectory,
    check_data_fingerprint,
    data_fingerprint,
    read_run_record,
    write_json_atomically,
)


class RunSpec(Protocol):
    kind: str
    run_file: str

    def default_config(self) -> TrainConfig: ...
    def data_path(self) -> str | None: ...
    def restore(self, record: dict[str, Any]) -> None: ...
    def build(self, out: Path, resume: bool, world: World, config: TrainConfig) -> tuple[Task, TrainConfig]: ...
    def record(self, task: Task) -> dict[str, Any]: ...
    def summary(self, task: Task) -> dict[str, Any]: ...


def train(spec: RunSpec, config: TrainConfig | None, out: str | Path, resume: bool = False) -> dict[str, Any]:
    """Train ``spec``'s task into the run directory ``out`` (``out/best``, ``out/last``, ``metrics.jsonl`` and the
    spec's ``run_file``), on one process or on every process torchrun started; returns the trainer's summary (final
    step and metrics) with the spec's."""
    out = Path(out)
    config = config or spec.default_config()
    with distributed.process_group(config.device) as world, RunDirectory.open(out, spec.kind, resume, world) as run:
        resume = resume and run.resumable  # a run killed before its first checkpoint starts from the beginning
        if resume and (out / spec.run_file).is_file():
            record = read_run_record(out / spec.run_file)
            spec.restore(record)
            check_data_fingerprint(record.get("data_sha256"), spec.data_path())
        task, config = spec.build(out, resume, world, config)
        if not resume and run.owner:
            record = {**spec.record(task), "data_sha256": data_fingerprint(spec.data_path())}
            write_json_atomically(out / spec.run_file, record)
        summary = Trainer(task, config, run).fit(resume=resume)
        return {**summary, **spec.summary(task)}
