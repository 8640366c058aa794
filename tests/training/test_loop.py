import json
import math

import pytest
import torch

from glassformer import runtime
from glassformer.models.gpt import GPT, GPTConfig
from glassformer.tokenizer import Tokenizer
from glassformer.tolerance import tolerance
from glassformer.training.lm import LanguageModelingTask
from glassformer.training.loop import TrainConfig, Trainer
from glassformer.training.optimizers import make_optimizer
from glassformer.training.run_directory import RunDirectory
from glassformer.training.schedules import lr_multiplier

TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. " * 30


def test_schedules_against_their_formulas():
    assert lr_multiplier(5, "constant", 10, 100) == 0.5
    assert lr_multiplier(50, "constant", 10, 100) == 1.0
    assert lr_multiplier(10, "cosine", 10, 110) == pytest.approx(1.0)
    assert lr_multiplier(60, "cosine", 10, 110, min_ratio=0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_multiplier(110, "cosine", 10, 110, min_ratio=0.1) == pytest.approx(0.1)
    assert lr_multiplier(5, "linear", 10, 110, min_ratio=0.0) == pytest.approx(0.5)
    assert lr_multiplier(60, "linear", 10, 110, min_ratio=0.0) == pytest.approx(0.5)
    assert lr_multiplier(110, "linear", 10, 110, min_ratio=0.0) == 0.0
    d_model, warmup = 512, 4000
    for step in (1, 100, 4000, 10000):
        paper = d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)
        peak = d_model**-0.5 * warmup**-0.5
        assert lr_multiplier(step, "noam", warmup, 0) == pytest.approx(paper / peak)


def make_task(seed=0, dropout=0.1):
    torch.manual_seed(seed)
    tokenizer = Tokenizer.train([TEXT], kind="char")
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size,
        max_seq_length=16,
        d_model=32,
        num_layers=2,
        num_heads=4,
        d_ff=64,
        dropout=dropout,
        attention_dropout=dropout,
    )
    ids = torch.tensor(tokenizer.encode(TEXT))
    return LanguageModelingTask(GPT(config), tokenizer, ids[:2000], ids[2000:], batch_size=4, eval_batches=2)


def losses(run_dir):
    return [
        r
        for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
        if "valid_loss" in r or "loss" in r
    ]


def config(**overrides):
    """A short run's TrainConfig, in float32 unless ``precision`` says otherwise (never ``auto``: what a test
    compares must not change with the machine's CPU)."""
    return TrainConfig(
        **{
            **dict(max_steps=12, schedule_steps=12, warmup_steps=3, eval_every=6, log_every=1, lr=3e-3, progress=False),
            "precision": "fp32",
            **overrides,
        }
    )


@pytest.mark.cpu_class
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])  # fp16: the loss scaler's state resumes too
def test_resume_continues_exactly(tmp_path, precision):
    straight = make_task()
    Trainer(straight, config(precision=precision), tmp_path / "straight").fit()

    first = make_task()
    Trainer(first, config(max_steps=6, precision=precision), tmp_path / "split").fit()
    second = make_task(seed=123)  # fresh weights and RNG: everything must come from the checkpoint
    summary = Trainer(second, config(precision=precision), tmp_path / "split").fit(resume=True)
    assert summary["step"] == 12
    for (name, a), b in zip(straight.model.state_dict().items(), second.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    keep = ("step", "loss", "valid_loss", "lr")
    strip = [{k: r[k] for k in keep if k in r} for r in losses(tmp_path / "straight")]
    split = [{k: r[k] for k in keep if k in r} for r in losses(tmp_path / "split")]
    assert strip == split


def test_the_loss_falls_and_checkpoints_hold_model_and_tokenizer(tmp_path):
    task = make_task()
    summary = Trainer(task, config(max_steps=40, schedule_steps=None, eval_every=20), tmp_path).fit()
    records = losses(tmp_path)
    valid = [r["valid_loss"] for r in records if "valid_loss" in r]
    assert valid[-1] < valid[0] < math.log(task.tokenizer.vocab_size) + 0.5
    assert summary["valid_ppl"] == pytest.approx(math.exp(summary["valid_loss"]))
    for name in ("best", "last"):
        model = GPT.from_pretrained(tmp_path / name)
        assert Tokenizer.from_pretrained(tmp_path / name).vocab_size == model.config.vocab_size


def test_refuses_to_overwrite_a_run(tmp_path):
    Trainer(make_task(), config(max_steps=2, eval_every=2), tmp_path).fit()
    with pytest.raises(ValueError, match="already holds a training run"):
        Trainer(make_task(), config(max_steps=2), tmp_path).fit()
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        Trainer(make_task(), config(), tmp_path / "new").fit(resume=True)


def test_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    task = make_task()
    trainer = Trainer(task, config(max_steps=6, eval_every=6), tmp_path)
    trainer.fit()
    before = GPT.from_pretrained(tmp_path / "last").state_dict()

    def crash(directory):
        (directory / "config.json").write_text("{half")
        raise KeyboardInterrupt

    monkeypatch.setattr(task, "save", crash)
    with RunDirectory(tmp_path, "training", resume=True) as trainer.run, pytest.raises(KeyboardInterrupt):
        trainer._write_checkpoint("last")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".lock",
        "best",
        "glassformer-run.json",
        "last",
        "metrics.jsonl",
    ]
    after = GPT.from_pretrained(tmp_path / "last").state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.cpu_class
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_the_loss_runs_under_the_autocast_the_precision_asks_for(tmp_path, precision):
    """fp32: no autocast; bf16 and fp16: autocast on the device, weights kept float32; fp16 scales the loss."""
    task = make_task()
    seen = []
    loss = task.loss

    def watched(batch):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return loss(batch)

    task.loss = watched
    trainer = Trainer(task, config(max_steps=2, eval_every=2, device="cpu", precision=precision), tmp_path)
    trainer.fit()
    half = precision != "fp32"
    assert all(enabled == half for enabled, _ in seen)
    if half:
        assert all(dtype == trainer.placement.dtype for _, dtype in seen)
    assert all(p.dtype == torch.float32 for p in task.model.parameters())
    assert (trainer.scaler is not None) == (precision == "fp16")
    state = json.loads((tmp_path / "last" / "trainer_state.json").read_text())
    assert ("grad_scaler" in state) == (precision == "fp16")


def test_bad_train_config():
    with pytest.raises(ValueError, match="unknown precision"):
        TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="unknown device"):
        TrainConfig(device="tpu")
    with pytest.raises(ValueError, match="unknown schedule"):
        TrainConfig(schedule="exponential")
    with pytest.raises(ValueError, match="max_steps must be a positive integer"):
        TrainConfig(max_steps=0)


@pytest.mark.cpu_class
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_gradient_accumulation_equals_one_step_on_the_joined_batches(tmp_path, precision):
    """grad_accum=2 over batches of 4 = one step on the 8 windows together (equal token counts per batch), in each
    precision the Trainer trains in (the joined step under the same autocast). The two routes round differently
    (two half-batch products summed, or one), so each weight's update agrees within ``tolerance(precision)`` of
    the update's size, scaled by the learning rate (Adam's step is ~lr whatever the gradient's size)."""
    # a large Adam eps: the key bias has a zero gradient in exact arithmetic, and Adam would blow its rounding
    # noise up to a full-size step
    train_config = config(max_steps=3, grad_accum=2, grad_clip=None, eval_every=3, eps=1e-4, precision=precision)
    accumulated = make_task(dropout=0.0)
    initial = {name: p.detach().clone() for name, p in accumulated.model.state_dict().items()}
    Trainer(accumulated, train_config, tmp_path).fit()

    joined = make_task(dropout=0.0)
    optimizer = make_optimizer(joined.model, train_config)
    generator = torch.Generator().manual_seed(train_config.seed)
    for step in range(1, 4):
        for group in optimizer.param_groups:
            group["lr"] = train_config.lr * lr_multiplier(step, "cosine", 3, 12, 0.1)
        optimizer.zero_grad()
        (x1, y1), (x2, y2) = joined.train_batch(generator), joined.train_batch(generator)
        with torch.autocast("cpu", dtype=runtime.PRECISIONS[precision], enabled=precision != "fp32"):
            loss, _ = joined.loss((torch.cat([x1, x2]), torch.cat([y1, y2])))
        loss.backward()
        optimizer.step()
    r = tolerance(precision, depth=joined.model.config.num_layers)["rtol"]
    for (name, a), b in zip(accumulated.model.state_dict().items(), joined.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a - initial[name], b - initial[name], rtol=r, atol=r * 3 * train_config.lr, msg=name)


@pytest.mark.slow  # torch.compile: ~30 s here in float32
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compiled_training_equals_eager_and_keeps_the_eager_names(tmp_path, precision):
    """Compiled training steps log the eager steps' losses (within ``tolerance(precision)``: the compiled graph
    fuses and reorders), and the checkpoint holds the plain module's names."""
    if precision not in runtime.native_precisions("cpu"):
        why = "compiling its autocast takes minutes there; it runs where it is native (eager: the tests above)"
        pytest.skip(f"{precision} is emulated on this CPU: {why}")
    task = make_task(dropout=0.0)
    summary = Trainer(task, config(max_steps=4, eval_every=4, precision=precision, compile=True), tmp_path).fit()
    assert math.isfinite(summary["valid_loss"])
    Trainer(make_task(dropout=0.0), config(max_steps=4, eval_every=4, precision=precision), tmp_path / "eager").fit()
    compiled, eager_run = ([r["loss"] for r in losses(run) if "loss" in r] for run in (tmp_path, tmp_path / "eager"))
    assert len(compiled) == 4 and compiled == pytest.approx(eager_run, rel=tolerance(precision, depth=2)["rtol"])
    eager = GPT.from_pretrained(tmp_path / "last")  # the checkpoint's names are the plain module's
    x, _ = task.train_batch(torch.Generator().manual_seed(1))
    task.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(task.model(x), eager.eval()(x), **tolerance("fp32", depth=2))


def test_a_run_starts_from_the_same_weights_whatever_ran_before(tmp_path):
    from safetensors.torch import load_file

    from glassformer.training.lm import train_language_model

    corpus = tmp_path / "text.txt"
    corpus.write_text(TEXT)
    fields = dict(d_model=32, num_layers=1, num_heads=4, d_ff=64, max_seq_length=16)
    runs = []
    for name in ("first", "second"):
        torch.rand(100)  # whatever else used the global RNG before the run
        train_language_model(tmp_path / name, corpus, "char", model_fields=fields, batch_size=4,
                             train=config(max_steps=2, eval_every=2))  # fmt: skip
        runs.append(load_file(tmp_path / name / "last" / "model.safetensors"))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_best_checkpoint_by_a_higher_is_better_metric_and_early_stopping(tmp_path):
    """A task's own evaluate(): the best checkpoint follows valid_accuracy, and patience stops the run."""
    task = make_task(dropout=0.0)
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.9])  # best at the 2nd evaluation, then 2 without a better one

    def evaluate():
        return {"valid_loss": 1.0, "valid_accuracy": next(scores)}

    task.evaluate = evaluate
    summary = Trainer(
        task, config(max_steps=50, eval_every=2, best_metric="valid_accuracy", patience=2), tmp_path
    ).fit()
    assert summary["step"] == 8 and summary["best_valid_accuracy"] == 0.7
    best = json.loads((tmp_path / "best" / "trainer_state.json").read_text())
    assert best["step"] == 4
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert "valid_ppl" not in records[-2] and "early_stop" in records[-1]
    with pytest.raises(ValueError, match="patience"):
        config(patience=0)
