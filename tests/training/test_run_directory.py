"""Run directories: crash-proof checkpoints, ownership, one trainer at a time, interrupts, data checked on resume."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from glassformer.training.lm import lm_train_config, train_language_model
from glassformer.training.loop import TrainingInterrupted
from glassformer.training.run_directory import COMPLETE, MARKER, RunDirectory

HERE = Path(__file__).parent
TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog {i % 7}\n" for i in range(300))
FIELDS = dict(d_model=16, num_layers=1, num_heads=2, d_ff=32, max_seq_length=16)


def train(out, corpus, resume=False, steps=8, **train_options):
    config = lm_train_config(
        max_steps=steps, eval_every=2, log_every=1, warmup_steps=2, progress=False, device="cpu", precision="fp32",
        **train_options,
    )  # fmt: skip
    return train_language_model(out, corpus, "char", model_fields=FIELDS, batch_size=4, train=config, resume=resume)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return path


def assert_same_weights(run: Path, reference: Path) -> None:
    final, expected = (load_file(r / "last" / "model.safetensors") for r in (run, reference))
    assert final.keys() == expected.keys() and all(torch.equal(final[k], expected[k]) for k in expected)


def checkpoint(folder: Path, step: int, complete: bool = True) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_text(str(step))
    if complete:
        (folder / COMPLETE).write_text(json.dumps({"step": step}))
    return folder


@pytest.mark.parametrize(
    "left, expected_step",
    [
        ({"last": 4, ".last.old": 2}, 4),  # killed while removing the old checkpoint
        ({".last.old": 2}, 2),  # killed between the two renames, the new folder unfinished
        ({".last.old": 2, ".last.x1.tmp": 4}, 4),  # killed between the renames, the new folder complete
        ({"last": 2, ".last.x1.tmp": None}, 2),  # killed while writing the new folder
    ],
)
def test_recover_puts_back_the_newest_complete_checkpoint(tmp_path, left, expected_step):
    (tmp_path / MARKER).write_text(json.dumps({"kind": "training"}))
    for name, step in left.items():
        checkpoint(tmp_path / name, step or 0, complete=step is not None)
    with RunDirectory(tmp_path, "training", resume=True) as run:
        assert run.resumable
    assert (tmp_path / "last" / "model.safetensors").read_text() == str(expected_step)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", MARKER, "last"]


def test_a_directory_glassformer_did_not_write_is_never_touched(tmp_path, corpus):
    mine = tmp_path / "mine"
    (mine / "best").mkdir(parents=True)
    (mine / "best" / "notes.txt").write_text("my notes")
    with pytest.raises(ValueError, match="files glassformer did not write"):
        train(mine, corpus)
    assert sorted(p.name for p in mine.rglob("*")) == ["best", "notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    train(empty, corpus, steps=2)  # an empty directory is taken
    assert (empty / MARKER).is_file() and (empty / "last" / COMPLETE).is_file()
    with pytest.raises(ValueError, match="holds a language model run, not a translation run"):
        RunDirectory(empty, "translation", resume=True)


def test_a_second_trainer_in_the_same_directory_is_refused(tmp_path, corpus):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from glassformer.training.run_directory import RunDirectory; "
         "run = RunDirectory(sys.argv[1], 'language model', resume=False); print('held', flush=True); time.sleep(60)",
         str(tmp_path / "run")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RuntimeError, match="another glassformer process is training in"):
            train(tmp_path / "run", corpus, resume=True)
    finally:
        holder.kill()
        holder.wait()
    train(tmp_path / "run", corpus, resume=True, steps=2)  # the lock went with the process


def test_resume_after_a_kill_before_the_first_checkpoint_starts_cleanly(tmp_path, corpus):
    train(tmp_path / "reference", corpus)
    run = tmp_path / "run"
    run.mkdir()
    (run / MARKER).write_text(json.dumps({"kind": "language model"}))
    (run / "metrics.jsonl").write_text('{"step": 0}\n{"step": 1, "loss": 9.0}\n{"step": 2, "lo')  # cut by the kill
    with pytest.raises(ValueError, match="already holds a language model run; pass --resume"):
        train(run, corpus)
    train(run, corpus, resume=True)
    assert_same_weights(run, tmp_path / "reference")
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps.count(1) == 1  # what the killed run logged is gone


def test_resume_drops_the_metrics_logged_after_the_last_checkpoint(tmp_path, corpus):
    run = tmp_path / "run"
    train(run, corpus, steps=4)
    with open(run / "metrics.jsonl", "a") as f:  # a killed run got as far as step 5 after its checkpoint at 4
        f.write('{"step": 5, "loss": 1.0}\n')
    train(run, corpus, resume=True, steps=6)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["step"] for r in records if "loss" in r]
    assert losses == [1, 2, 3, 4, 5, 6]


def test_an_edited_data_file_is_refused_on_resume(tmp_path, corpus):
    train(tmp_path / "run", corpus, steps=2)
    corpus.write_text(TEXT.replace("fox", "cat"))
    with pytest.raises(ValueError, match=r"corpus.txt changed \(sha256 .*\) since the run started"):
        train(tmp_path / "run", corpus, resume=True, steps=4)


def test_sigterm_saves_last_and_resume_finishes_identically(tmp_path, corpus):
    train(tmp_path / "reference", corpus, steps=40)
    script = (
        "import sys; sys.path.insert(0, sys.argv[3]); from pathlib import Path; "
        "from test_run_directory import train; train(Path(sys.argv[1]), Path(sys.argv[2]), steps=40)"
    )
    run = tmp_path / "run"
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(run), str(corpus), str(HERE)], stderr=subprocess.PIPE, text=True
    )
    while not (run / "last" / COMPLETE).is_file():  # stop it mid-run, after its first checkpoint
        time.sleep(0.05)
    child.send_signal(signal.SIGTERM)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode != 0 and "TrainingInterrupted: stopped by SIGTERM at step" in stderr
    saved = json.loads((run / "last" / COMPLETE).read_text())["step"]
    assert saved < 40
    train(run, corpus, resume=True, steps=40)
    assert_same_weights(run, tmp_path / "reference")


def test_ctrl_c_in_the_cli_saves_and_exits_130_with_one_line(tmp_path, corpus):
    run = tmp_path / "run"
    shape = ["--d-model", "16", "--num-layers", "1", "--num-heads", "2", "--d-ff", "32", "--block-size", "16"]
    command = [sys.executable, "-m", "glassformer", "train", "lm", "--data", str(corpus), "--out", str(run), *shape,
               "--max-steps", "100000", "--eval-every", "2", "--quiet", "--device", "cpu"]  # fmt: skip
    child = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    while not (run / "last" / COMPLETE).is_file():
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=120)
    lines = [line for line in stderr.splitlines() if not line.startswith("glassformer: device")]
    assert child.returncode == 130 and len(lines) == 1 and "stopped by SIGINT" in lines[0], stderr
    assert "continue with --resume" in lines[0]


def test_training_interrupted_is_a_keyboard_interrupt():
    assert issubclass(TrainingInterrupted, KeyboardInterrupt)
