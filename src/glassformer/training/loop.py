"""The training loop shared by every model kind.

A *task* tells the loop what it trains; the loop does the rest (optimizer, schedule, clipping, accumulation,
autocast, evaluation, metrics, checkpoints, resume):

    task.model                          the nn.Module
    task.train_batch(generator)         the next training batch, drawn with ``generator`` (its state is saved)
    task.loss(batch) -> (loss, tokens)  mean loss over the batch and the number of tokens it covers
    task.valid_batches()                an iterable of validation batches
    task.save(directory)                write the model (and its tokenizer) for inference
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

A run directory (``glassformer.training.run_directory``: owned, locked, crash-proof) holds ``metrics.jsonl`` (one
JSON object per log line), ``last/`` and ``best/`` (the model plus ``trainer_state.safetensors`` /
``trainer_state.json``: optimizer, RNG states, step). A kill at any moment leaves the last complete checkpoint to
resume from; Ctrl-C or SIGTERM saves ``last/`` after the current step and raises ``TrainingInterrupted``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from glassformer import runtime
from glassformer.files import read_json
from glassformer.options import check_fields
from glassformer.training.run_directory import RunDirectory
from glassformer.training.schedules import SCHEDULES, lr_multiplier

STATE_TENSORS, STATE_JSON = "trainer_state.safetensors", "trainer_state.json"


class Task(Protocol):
    model: nn.Module

    def train_batch(self, generator: torch.Generator) -> Any: ...
    def loss(self, batch: Any) -> tuple[torch.Tensor, int]: ...
    def valid_batches(self) -> Any: ...
    def save(self, directory: Path) -> None: ...


@dataclasses.dataclass
class TrainConfig:
    """How to train. ``max_minutes`` stops early on wall-clock time (then evaluates and saves); ``schedule_steps``
    sets the length of the learning-rate schedule when a run is meant to stop and resume before its end."""

    max_steps: int = 1000
    max_minutes: float | None = None
    schedule_steps: int | None = None  # length of the lr schedule; default max_steps
    lr: float = 1e-3
    schedule: str = "cosine"
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    optimizer: str = "adamw"
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
    progress: bool = True
    bf16: bool | None = None  # deprecated: precision="bf16" (True) or "fp32" (False)

    def __post_init__(self) -> None:
        if self.bf16 is not None:
            warnings.warn("TrainConfig(bf16=...) is deprecated; use precision='bf16' or 'fp32'", DeprecationWarning, 2)
            self.precision, self.bf16 = ("bf16" if self.bf16 else "fp32"), None
        if self.precision not in ("auto", *runtime.PRECISIONS):
            raise ValueError(f"unknown precision {self.precision!r}; choose auto, fp32, bf16 or fp16")
        check_fields(self)  # every field's type and range (glassformer.options.RULES)
        runtime.resolve_device(self.device)  # a device that is not there: refused before any work
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {SCHEDULES}")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose 'adam' or 'adamw'")
        if len(self.betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {self.betas!r}")

    @property
    def lower_is_better(self) -> bool:
        return self.best_metric.endswith(("loss", "ppl"))


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C or SIGTERM after ``last/`` was saved; ``--resume`` continues it."""


def make_optimizer(
    model: nn.Module, config: TrainConfig, lr_scales: dict[str, float] | None = None, fused: bool = True
) -> torch.optim.Optimizer:
    """Adam or AdamW; weight decay only on matrices (rank >= 2), never on biases, norms or positions' vectors.

    ``lr_scales`` (parameter name -> factor, default 1) gives parameters their own multiple of the scheduled
    learning rate, e.g. layer-wise decay when fine-tuning a pretrained encoder. ``fused``: one kernel for the whole
    update (where ``runtime.fused_optimizer_works`` on the parameters' device)."""
    lr_scales = lr_scales or {}
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((p.dim() >= 2, lr_scales.get(name, 1.0)), []).append(p)
    param_groups = [
        {"params": params, "weight_decay": config.weight_decay if decay else 0.0, "lr_scale": scale}
        for (decay, scale), params in sorted(groups.items(), key=lambda item: (not item[0][0], -item[0][1]))
    ]
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return cls(param_groups, lr=config.lr, betas=config.betas, eps=config.eps, fused=fused)


class Trainer:
    def __init__(self, task: Task, config: TrainConfig, run_dir: str | Path | RunDirectory):
        """``run_dir``: a path (``fit`` opens it as a ``RunDirectory``) or a ``RunDirectory`` the caller opened."""
        self.task = task
        self.config = config
        self.run = run_dir if isinstance(run_dir, RunDirectory) else None
        self.run_dir = run_dir.path if isinstance(run_dir, RunDirectory) else Path(run_dir)
        self._stop_signal: int | None = None
        self.placement = runtime.place(config.device, config.precision)
        device = self.placement.device
        task.model.to(device)  # before the optimizer, so that its state is created on the device
        scales = task.lr_scales() if hasattr(task, "lr_scales") else None
        self.optimizer = make_optimizer(task.model, config, scales, fused=runtime.fused_optimizer_works(device))
        # float16's narrow range: scale the loss so that small gradients do not underflow (bfloat16 needs none)
        self.scaler = torch.amp.GradScaler(device.type) if self.placement.precision == "fp16" else None
        self.data_generator = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.best_score = math.inf if config.lower_is_better else -math.inf
        self.evaluations_without_improvement = 0

    # --- checkpoints ----------------------------------------------------------------------------------------

    def _write_checkpoint(self, name: str) -> None:
        self.run.write_checkpoint(name, self._fill_checkpoint, self.step)

    def _fill_checkpoint(self, tmp: Path) -> None:
        """The model (``task.save``) and the trainer's state, written into the new folder ``tmp``."""
        self.task.save(tmp)
        optimizer = self.optimizer.state_dict()
        tensors = {"rng.torch": torch.get_rng_state(), "rng.data": self.data_generator.get_state()}
        if self.placement.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.placement.device)
        state_json: dict[str, Any] = {"param_groups": optimizer["param_groups"], "scalars": {}}
        for index, state in optimizer["state"].items():
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optimizer.{index}.{key}"] = value.contiguous()
                else:
                    state_json["scalars"][f"{index}.{key}"] = value
        state_json.update(
            step=self.step,
            best_score=self.best_score,
            evaluations_without_improvement=self.evaluations_without_improvement,
        )
        if hasattr(self.task, "state_dict"):
            state_json["task"] = self.task.state_dict()
        if self.scaler is not None:
            state_json["grad_scaler"] = self.scaler.state_dict()
        save_file(tensors, tmp / STATE_TENSORS)
        (tmp / STATE_JSON).write_text(json.dumps(state_json, indent=1))

    def _restore(self, directory: Path) -> None:
        from glassformer.checkpoints import load_state_dict_checked, read_checkpoint

        _, weights = read_checkpoint(directory)
        load_state_dict_checked(self.task.model, weights)
        tensors = load_file(directory / STATE_TENSORS)
        state_json = read_json(directory / STATE_JSON, "trainer state")
        state: dict[int, dict[str, Any]] = {}
        for name, value in tensors.items():
            if name.startswith("optimizer."):
                _, index, key = name.split(".", 2)
                state.setdefault(int(index), {})[key] = value
        for name, value in state_json["scalars"].items():
            index, key = name.split(".", 1)
            state.setdefault(int(index), {})[key] = value
        groups = state_json["param_groups"]
        for group in groups:
            group["betas"] = tuple(group["betas"])
        self.optimizer.load_state_dict({"state": state, "param_groups": groups})
        torch.set_rng_state(tensors["rng.torch"])
        if "rng.cuda" in tensors and self.placement.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.placement.device)
        if self.scaler is not None and "grad_scaler" in state_json:
            self.scaler.load_state_dict(state_json["grad_scaler"])
        self.data_generator.set_state(tensors["rng.data"])
        self.step = state_json["step"]
        self.best_score = state_json.get("best_score", state_json.get("best_valid_loss"))
        self.evaluations_without_improvement = state_json.get("evaluations_without_improvement", 0)
        if "task" in state_json and hasattr(self.task, "load_state_dict"):
            self.task.load_state_dict(state_json["task"])

    # --- the loop -------------------------------------------------------------------------------------------

    def _train_step(self) -> tuple[float, int]:
        """One optimizer step over ``grad_accum`` batches at the learning rate already set: ``(loss, tokens)``."""
        c, model = self.config, self.task.model
        self.optimizer.zero_grad(set_to_none=True)
        step_loss, step_tokens = 0.0, 0
        for _ in range(c.grad_accum):
            batch = runtime.to_device(self.task.train_batch(self.data_generator), self.placement.device)
            with self._autocast():
                loss, tokens = self.task.loss(batch)
            loss = loss / c.grad_accum
            (loss if self.scaler is None else self.scaler.scale(loss)).backward()
            step_loss = step_loss + loss.detach().float()
            step_tokens += tokens
        step_loss = float(step_loss)  # one synchronization per step
        if not math.isfinite(step_loss):
            raise FloatingPointError(f"the loss became {step_loss} at step {self.step + 1}; lower the lr")
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients
        if c.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
        if self.scaler is None:
            self.optimizer.step()
        else:  # skips the update when a gradient overflowed, and adapts the scale
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return step_loss, step_tokens

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
        with RunDirectory(self.run_dir, "training", resume) as self.run:
            try:
                return self._fit(resume)
            finally:
                self.run = None

    def _fit(self, resume: bool) -> dict[str, Any]:
        c = self.config
        if resume and self.run.resumable:
            self._restore(self.run_dir / "last")
            self.run.truncate_metrics(self.step)  # what a killed run logged after its last checkpoint goes
        else:
            self.run.truncate_metrics(None)
            torch.manual_seed(c.seed)
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
        name = signal.Signals(self._stop_signal).name
        self._write_checkpoint("last")
        self._log({"step": self.step, "interrupted": name})
        raise TrainingInterrupted(
            f"stopped by {name} at step {self.step}; last/ is saved in {self.run_dir} — continue with --resume"
        )

    def _loop(self) -> dict[str, Any]:
        c = self.config
        if c.progress:
            tqdm.write(f"training on {self.placement.describe()}", file=sys.stderr)
        self._log({"step": self.step, "device": str(self.placement.device), "precision": self.placement.precision})
        model = self.task.model
        model.train()
        if c.compile:
            model.compile(dynamic=True)  # compiles forward in place; parameter names are unchanged
        start, window_start, window_tokens = time.perf_counter(), time.perf_counter(), 0
        # under a time limit the step count is not the finish line: no step total, minutes left in the postfix
        total = c.max_steps if c.max_minutes is None else None
        bar = tqdm(total=total, initial=self.step, disable=not c.progress, desc="train", unit="step")
        metrics: dict[str, float] = {"valid_loss": math.nan}
        total_steps = c.schedule_steps or c.max_steps
        while self.step < c.max_steps:
            lr = c.lr * lr_multiplier(self.step + 1, c.schedule, c.warmup_steps, total_steps, c.min_lr_ratio)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            step_loss, tokens = self._train_step()
            window_tokens += tokens
            self.step += 1
            bar.update(1)
            out_of_time = c.max_minutes is not None and time.perf_counter() - start > 60 * c.max_minutes
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
                metrics = self.evaluate()
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
            if self._stop_signal is not None:
                bar.close()
                self._stop_for_signal()
        bar.close()
        return {"step": self.step, **metrics, f"best_{c.best_metric}": self.best_score}
