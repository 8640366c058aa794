"""The training loop shared by every model kind.

A *task* tells the loop what it trains; the loop does the rest (optimizer, schedule, clipping, accumulation,
autocast, evaluation, metrics, checkpoints, resume):

    task.model                          the nn.Module
    task.train_batch(generator)         the next training batch, drawn with ``generator`` (its state is saved)
    task.loss(batch) -> (loss, tokens)  mean loss over the batch and the number of tokens it covers
    task.valid_batches()                an iterable of validation batches
    task.save(directory, weights=None)  write the model (and its tokenizer) for inference; ``weights``: the whole
                                        state dict of a model sharded over processes (FSDP), gathered for rank 0
    task.shard                          optional (required with several processes): a ``distributed.Shard`` the
                                        loop sets; ``train_batch`` draws the global batch and keeps ``shard.take``
    task.state_dict() / load_state_dict(state)   optional: the data position (e.g. epoch and batch), saved
                                        in the checkpoint so that ``resume`` continues with the same batches
    task.evaluate() -> {"valid_loss": ..., "valid_accuracy": ...}   optional: validation metrics computed by the
                                        task itself (instead of the mean of ``loss`` over ``valid_batches``)
    task.lr_scales() -> {parameter name: factor}   optional: per-parameter multiples of the learning rate

The ``best/`` checkpoint is the one with the best ``best_metric`` (lowest for a loss or perplexity, highest
otherwise, e.g. ``valid_accuracy``); with ``patience`` the run stops after that many evaluations without a better
value (early stopping).

The loop runs where ``device`` and ``precision`` say (``glassformer.runtime.place``; both ``auto`` by default: a GPU
if there is one, bfloat16 autocast where it is native, float32 where it is emulated, float16 autocast with a
gradient scaler when asked for): the model, every batch and the optimizer state live on that device, and the
weights stay float32 (mixed precision).

Under torchrun (``glassformer.training.distributed``) every process runs this same loop in step: the model wrapped
by DDP or sharded by FSDP2 (``config.parallel``), each rank on its share of each global batch with its loss weighted
so that N processes compute the one-process gradient, one all-reduce of the loss (and of stop flags) per step,
rank 0 alone logging and owning the run directory, every rank writing its part of each checkpoint.

A run directory (``glassformer.training.run_directory``: owned, locked, crash-proof) holds ``metrics.jsonl`` (one
JSON object per log line), ``last/`` and ``best/`` (the model plus the trainer's state: optimizer, RNG states, step —
``glassformer.training.trainer_state``). A kill at any moment leaves the last complete checkpoint to
resume from; Ctrl-C or SIGTERM saves ``last/`` after the current step and raises ``TrainingInterrupted``.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm import tqdm

from glassformer import runtime
from glassformer.training import distributed, trainer_state
from glassformer.training.config import TrainConfig
from glassformer.training.optimizers import make_optimizer
from glassformer.training.run_directory import RunDirectory
from glassformer.training.schedules import lr_multiplier


class Task(Protocol):
    model: nn.Module

    def train_batch(self, generator: torch.Generator) -> Any: ...
    def loss(self, batch: Any) -> tuple[torch.Tensor, int]: ...
    def valid_batches(self) -> Any: ...
    def save(self, directory: Path, weights: dict[str, torch.Tensor] | None = None) -> None: ...


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C or SIGTERM after ``last/`` was saved; ``--resume`` continues it."""


class Trainer:
    def __init__(self, task: Task, config: TrainConfig, run_dir: str | Path | RunDirectory):
        """``run_dir``: a path (``fit`` opens it as a ``RunDirectory``) or a ``RunDirectory`` the caller opened.

        Under torchrun (a process group joined, ``glassformer.training.distributed``) the model is wrapped for
        ``config.parallel``, and the task (which must have a ``shard``) trains on this rank's part of each batch."""
        self.task = task
        self.config = config
        self.run = run_dir if isinstance(run_dir, RunDirectory) else None
        self.run_dir = run_dir.path if isinstance(run_dir, RunDirectory) else Path(run_dir)
        self._stop_signal: int | None = None
        self.world = distributed.current()
        self.placement = runtime.place(distributed.device_for(config.device, self.world), config.precision)
        device = self.placement.device
        task.model.to(device)  # before the optimizer, so that its state is created on the device
        self._sharded = self.world.distributed and config.parallel == "fsdp"
        if self._sharded and self.placement.precision == "fp16":
            raise ValueError("--parallel fsdp does not scale float16 gradients; use --precision bf16 or fp32")
        if self.world.distributed and not hasattr(task, "shard"):
            raise ValueError(f"{type(task).__name__} has no `shard`: it cannot share its batches between processes")
        if hasattr(task, "shard"):
            task.shard = distributed.Shard(self.world.rank, self.world.size)
        self.wrapped = distributed.wrap(task.model, config.parallel, self.world, device)  # what forward runs through
        scales = task.lr_scales() if hasattr(task, "lr_scales") else None
        self.optimizer = make_optimizer(task.model, config, scales, fused=runtime.fused_optimizer_works(device))
        # float16's narrow range: scale the loss so that small gradients do not underflow (bfloat16 needs none)
        self.scaler = torch.amp.GradScaler(device.type) if self.placement.precision == "fp16" else None
        self.data_generator = torch.Generator().manual_seed(config.seed)  # the same on every rank: global batches
        self.step = 0
        self.elapsed = 0.0  # seconds of training in this run so far, every session of it (the ranks' mean)
        self.best_score = math.inf if config.lower_is_better else -math.inf
        self.evaluations_without_improvement = 0

    # --- checkpoints ---------------------------------------------------------------------------------------------

    def _write_checkpoint(self, name: str) -> None:
        """Every rank takes part (sharded state, gathered weights); rank 0 owns the folder and renames it."""
        full = distributed.full_state_dict(self.task.model) if self._sharded else None
        if self.world.is_main:
            self.run.write_checkpoint(name, lambda tmp: self._fill_checkpoint(tmp, full), self.step)
        else:
            self._fill_checkpoint(None, full)

    def _fill_checkpoint(self, tmp: Path | None, full_weights: dict | None) -> None:
        """The model (``task.save``, by rank 0) and the trainer's state (``trainer_state``), written into ``tmp``."""
        tmp = Path(self.world.from_main(lambda: str(tmp)))  # the folder rank 0 made, for every rank
        if self.world.is_main:
            self.task.save(tmp) if full_weights is None else self.task.save(tmp, full_weights)
        record: dict[str, Any] = {
            "step": self.step,
            "best_score": self.best_score,
            "evaluations_without_improvement": self.evaluations_without_improvement,
            "elapsed_seconds": self.elapsed,
        }
        if hasattr(self.task, "state_dict"):
            record["task"] = self.task.state_dict()
        if self.scaler is not None:
            record["grad_scaler"] = self.scaler.state_dict()
        trainer_state.write(tmp, self.world, self.task.model, self.optimizer, self.data_generator, record)
        self.world.barrier()  # every rank's files are written before rank 0 marks the folder complete

    def _restore(self, directory: Path) -> None:
        if not (directory / trainer_state.STATE_SHARDS).is_dir():  # one process wrote it: its model file is whole
            from glassformer.checkpoints import load_state_dict_checked, read_checkpoint

            _, weights = read_checkpoint(directory)
            if self._sharded:  # each rank keeps its part of the whole weights
                from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

                options = StateDictOptions(full_state_dict=True, strict=False)  # tied weights are stored once
                set_model_state_dict(self.task.model, weights, options=options)
            else:
                load_state_dict_checked(self.task.model, weights)
        record = trainer_state.read(directory, self.world, self.task.model, self.optimizer, self.data_generator)
        if self.scaler is not None and "grad_scaler" in record:
            self.scaler.load_state_dict(record["grad_scaler"])
        self.step = record["step"]
        self.best_score = record.get("best_score", record.get("best_valid_loss"))
        self.evaluations_without_improvement = record.get("evaluations_without_improvement", 0)
        self.elapsed = record.get("elapsed_seconds", 0.0)
        if "task" in record and hasattr(self.task, "load_state_dict"):
            self.task.load_state_dict(record["task"])

    # --- the loop -------------------------------------------------------------------------------------------

    def _train_step(self) -> tuple[float, int]:
        """One optimizer step over ``grad_accum`` batches at the learning rate already set: ``(loss, tokens)``, both
        over the global batch (every rank's share).

        Each rank's mean loss over its ``count`` tokens is weighted by ``world size · count / global count`` before
        the backward pass: the gradients' average over ranks is then the gradient of the global batch's mean loss
        (module doc of ``glassformer.training.distributed``); with one process the weight is 1."""
        c, world = self.config, self.world
        self.optimizer.zero_grad(set_to_none=True)
        step_loss, step_tokens = torch.zeros((), device=self.placement.device), 0
        shard = getattr(self.task, "shard", None)
        for micro in range(c.grad_accum):
            batch = runtime.to_device(self.task.train_batch(self.data_generator), self.placement.device)
            with self._forward_through_wrapper(), distributed.gradient_sync(self.wrapped, micro == c.grad_accum - 1):
                with self._autocast():
                    loss, count = self.task.loss(batch)
                if world.distributed:  # this rank's part of the global batch's tokens (none when idle)
                    mine = 0 if shard is not None and shard.idle else count
                    (total,) = world.sum([mine])
                    share = mine / total
                else:
                    total, share = count, 1.0
                weight = world.size * share / c.grad_accum
                (loss * weight if self.scaler is None else self.scaler.scale(loss * weight)).backward()
            step_loss = step_loss + loss.detach().float() * (share / c.grad_accum)
            step_tokens += int(total)
        (step_loss,) = world.sum([float(step_loss)])  # one synchronization per step (and one all-reduce)
        if not math.isfinite(step_loss):
            raise FloatingPointError(f"the loss became {step_loss} at step {self.step + 1}; lower the lr")
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients
        if c.grad_clip:
            nn.utils.clip_grad_norm_(self.task.model.parameters(), c.grad_clip)
        if self.scaler is None:
            self.optimizer.step()
        else:  # skips the update when a gradient overflowed, and adapts the scale
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return step_loss, step_tokens

    @contextlib.contextmanager
    def _forward_through_wrapper(self):
        """The task's ``loss`` calls ``task.model``: for a training step that is the DDP wrapper, whose forward
        pass prepares the gradients' all-reduce (FSDP shards the model in place: nothing to swap)."""
        model = self.task.model
        self.task.model = self.wrapped
        try:
            yield
        finally:
            self.task.model = model

    def measure_steps(self, steps: int = 2) -> tuple[float, float]:
        """``(seconds per step, tokens per second)`` of ``steps`` real training steps after one untimed step: for
        planning a run, or a benchmark, on a throwaway model and task (weights and data position change)."""
        self.task.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr * group.get("lr_scale", 1.0) * 1e-3  # small: these steps are not a run
        self._train_step()
        tokens = 0
        start = time.perf_counter()
        for _ in range(steps):
            tokens += self._train_step()[1]
        seconds = time.perf_counter() - start
        return seconds / steps, tokens / seconds

    def evaluate(self) -> dict[str, float]:
        """Validation metrics: ``{"valid_loss": mean loss per token, ...}`` (more if the task computes them)."""
        model = self.task.model
        model.eval()
        with torch.no_grad(), self._autocast():
            if hasattr(self.task, "evaluate"):
                metrics = self.task.evaluate()
            else:
                total, tokens = 0.0, 0
                for batch in self.task.valid_batches():
                    loss, n = self.task.loss(runtime.to_device(batch, self.placement.device))
                    total += loss.item() * n
                    tokens += n
                if tokens == 0:
                    raise ValueError("the validation split is empty; give more data or a smaller block size")
                metrics = {"valid_loss": total / tokens}
        model.train()
        if self.config.best_metric not in metrics:
            raise ValueError(f"best_metric {self.config.best_metric!r} is not one of the metrics {sorted(metrics)}")
        return metrics

    def _improved(self, score: float) -> bool:
        return score < self.best_score if self.config.lower_is_better else score > self.best_score

    def _autocast(self):
        """Mixed precision: matrix products in bfloat16/float16 on the device, weights and reductions in float32."""
        p = self.placement
        return torch.autocast(p.device.type, dtype=p.dtype, enabled=p.half)

    def _log(self, record: dict[str, Any]) -> None:
        self.run.log(record)

    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train until ``max_steps`` (or ``max_minutes``); returns the final metrics. ``resume``: continue from
        ``last/`` (a run killed before its first checkpoint starts again from the beginning)."""
        if self.run is not None:
            return self._fit(resume)
        with RunDirectory.open(self.run_dir, "training", resume, self.world) as self.run:
            try:
                return self._fit(resume)
            finally:
                self.run = None

    def _fit(self, resume: bool) -> dict[str, Any]:
        try:
            return self._fit_here(resume)
        except torch.distributed.DistError as e:  # a peer died or hung: say so in a line, not in gloo's words
            cause = str(e).strip().splitlines()[0][:300]
            raise RuntimeError(
                f"rank {self.world.rank} lost contact with the other processes at step {self.step} ({cause}); "
                "the job stops — the last complete checkpoint is kept, continue with --resume"
            ) from e

    def _fit_here(self, resume: bool) -> dict[str, Any]:
        c = self.config
        if resume and self.run.resumable:
            self._restore(self.run_dir / "last")
            self.run.truncate_metrics(self.step)  # what a killed run logged after its last checkpoint goes
        else:
            self.run.truncate_metrics(None)
            torch.manual_seed(c.seed + self.world.rank)  # dropout: each rank its own masks
        previous_handlers = self._catch_stop_signals()
        try:
            return self._loop()
        finally:
            for number, handler in previous_handlers.items():
                signal.signal(number, handler)

    def _catch_stop_signals(self) -> dict[int, Any]:
        """Ctrl-C and SIGTERM set a flag that the loop reads after each step (a second Ctrl-C stops at once)."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(number: int, frame: Any) -> None:
            if self._stop_signal is not None and number == signal.SIGINT:
                raise KeyboardInterrupt
            self._stop_signal = number

        return {number: signal.signal(number, handler) for number in (signal.SIGINT, signal.SIGTERM)}

    def _stop_for_signal(self) -> None:
        name = signal.Signals(self._stop_signal or signal.SIGTERM).name  # SIGTERM: another rank's
        self._write_checkpoint("last")
        self._log({"step": self.step, "interrupted": name})
        raise TrainingInterrupted(
            f"stopped by {name} at step {self.step}; last/ is saved in {self.run_dir} — continue with --resume"
        )

    def _loop(self) -> dict[str, Any]:
        c = self.config
        progress = c.progress and self.world.is_main  # one progress bar, on rank 0
        if progress:
            where = f" × {self.world.size} processes ({c.parallel})" if self.world.distributed else ""
            tqdm.write(f"training on {self.placement.describe()}{where}", file=sys.stderr)
        self._log({"step": self.step, "device": str(self.placement.device), "precision": self.placement.precision})
        model = self.task.model
        model.train()
        if c.compile:
            model.compile(dynamic=True)  # compiles forward in place; parameter names are unchanged
        window_start, window_tokens = time.perf_counter(), 0
        start = time.perf_counter() - self.elapsed  # the run's minutes count every session (resumed runs too)
        # under a time limit the step count is not the finish line: no step total, minutes left in the postfix
        total = c.max_steps if c.max_minutes is None else None
        bar = tqdm(total=total, initial=self.step, disable=not progress, desc="train", unit="step")
        metrics: dict[str, float] = {"valid_loss": math.nan}
        total_steps = c.schedule_steps or c.max_steps
        while self.step < c.max_steps:
            spent = self.elapsed / (60 * c.max_minutes) if c.max_minutes is not None else 0.0
            lr = c.lr * lr_multiplier(
                self.step + 1, c.schedule, c.warmup_steps, total_steps, c.min_lr_ratio, c.warmdown_fraction, spent
            )
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            step_loss, tokens = self._train_step()
            window_tokens += tokens
            self.step += 1
            bar.update(1)
            self.elapsed = time.perf_counter() - start
            out_of_time = c.max_minutes is not None and self.elapsed > 60 * c.max_minutes
            stop = self._stop_signal is not None  # read once: a signal may arrive at any moment of this step
            if self.world.distributed:  # every rank stops at the same step: one rank's clock or signal stops all
                out_of_time, stop, elapsed = self.world.sum([out_of_time, stop, self.elapsed])
                out_of_time, stop, self.elapsed = out_of_time > 0, stop > 0, elapsed / self.world.size
            done = self.step >= c.max_steps or out_of_time
            if self.step % c.log_every == 0 or done:
                elapsed = time.perf_counter() - window_start
                rate = window_tokens / elapsed if elapsed > 0 else 0.0
                self._log({"step": self.step, "loss": step_loss, "lr": lr, "tokens_per_s": rate})
                postfix = {"loss": f"{step_loss:.3f}", "lr": f"{lr:.2e}", "tok_s": f"{rate:.0f}"}
                if c.max_minutes is not None:
                    postfix["min_left"] = f"{max(c.max_minutes - (time.perf_counter() - start) / 60, 0):.1f}"
                bar.set_postfix(postfix)
                window_start, window_tokens = time.perf_counter(), 0
            if self.step % c.eval_every == 0 or done:
                metrics = self.evaluate()  # every rank evaluates (FSDP needs all of them); rank 0's numbers count
                metrics = self.world.from_main(lambda metrics=metrics: metrics)
                if not hasattr(self.task, "evaluate"):  # a language model's loss per token: also as perplexity
                    metrics["valid_ppl"] = math.exp(min(metrics["valid_loss"], 50))
                self._log({"step": self.step, **metrics})
                if self._improved(metrics[c.best_metric]):
                    self.best_score = metrics[c.best_metric]
                    self.evaluations_without_improvement = 0
                    self._write_checkpoint("best")
                else:
                    self.evaluations_without_improvement += 1
                stop_early = c.patience is not None and self.evaluations_without_improvement >= c.patience
                if stop_early:
                    self._log(
                        {"step": self.step, "early_stop": f"no better {c.best_metric} in {c.patience} evaluations"}
                    )
                self._write_checkpoint("last")
                done = done or stop_early
            if done:
                break
            if stop:  # what every rank agreed on, not a signal that came after the agreement
                bar.close()
                self._stop_for_signal()
        bar.close()
        return {"step": self.step, **metrics, f"best_{c.best_metric}": self.best_score}
