"""Kill a training run with SIGKILL at every file-system step of a checkpoint write, and at random moments; resume
each one; print JSON saying whether every resumed run ended with the weights of the uninterrupted run.

    python kill_harness.py WORKDIR [RANDOM_KILLS]

Each run is a forked child of this process (which imports torch and glassformer once and computes nothing itself,
so forking is safe and cheap); the kills are real SIGKILLs, from the child itself at the chosen step or from this
process after a random delay. Used by tests/training/test_fault_injection.py.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from glassformer import runtime
from glassformer.training.lm import lm_train_config, train_language_model
from glassformer.training.run_directory import RunDirectory

TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog {i % 7}\n" for i in range(300))
STEPS_OF_A_WRITE = (("os", "rename"), ("os", "replace"), ("os", "fsync"), ("os", "mkdir"), ("shutil", "rmtree"))


def train(out: Path, corpus: Path, resume: bool) -> None:
    fields = dict(d_model=16, num_layers=1, num_heads=2, d_ff=32, max_seq_length=16, dropout=0.1)
    config = lm_train_config(
        max_steps=8, eval_every=2, log_every=1, warmup_steps=2, progress=False, device="cpu", precision="fp32"
    )
    train_language_model(out, corpus, "char", model_fields=fields, batch_size=4, train=config, resume=resume)


def in_child(work) -> int:
    """Run ``work()`` in a forked child; its exit status (negative: killed by that signal)."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            work()
        except BaseException as e:  # noqa: BLE001 - reported through the exit status
            print(f"child failed: {type(e).__name__}: {e}", file=sys.stderr)
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def killing_at(step: int | None, during_write: int, report: Path | None = None):
    """Patch the file-system calls to SIGKILL this process at the ``step``-th one made during the
    ``during_write``-th checkpoint write (None: count them into ``report``)."""
    counter = {"writes": 0, "steps": 0, "inside": False}
    for module_name, name in STEPS_OF_A_WRITE:
        module = sys.modules[module_name]
        original = getattr(module, name)

        def wrapped(*args, _original=original, **kwargs):
            if counter["inside"] and counter["writes"] == during_write:
                counter["steps"] += 1
                if counter["steps"] == step:
                    os.kill(os.getpid(), signal.SIGKILL)
            return _original(*args, **kwargs)

        setattr(module, name, wrapped)
    write = RunDirectory.write_checkpoint

    def counting_write(self, *args, **kwargs):
        counter["writes"] += 1
        counter["inside"] = True
        write(self, *args, **kwargs)
        counter["inside"] = False
        if report is not None and counter["writes"] == during_write:
            report.write_text(str(counter["steps"]))

    RunDirectory.write_checkpoint = counting_write


def main() -> None:
    torch.set_num_threads(1)  # no thread pools in the parent to fork; the tiny model needs none
    runtime.fused_optimizer_works(torch.device("cpu"))  # its probe imports a lot: once, before forking
    work = Path(sys.argv[1])
    random_kills = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    corpus = work / "corpus.txt"
    corpus.write_text(TEXT)
    reference = work / "reference"
    assert in_child(lambda: train(reference, corpus, False)) == 0
    results = []

    def resume_and_compare(out: Path, label: str) -> None:
        status = in_child(lambda: train(out, corpus, out.exists()))
        final = load_file(out / "last" / "model.safetensors") if status == 0 else {}
        expected = load_file(reference / "last" / "model.safetensors")
        same = (
            status == 0 and final.keys() == expected.keys() and all(torch.equal(final[k], expected[k]) for k in final)
        )
        leftovers = sorted(p.name for p in out.iterdir() if p.name.endswith((".tmp", ".old")))
        results.append({"kill": label, "resumed": status, "identical": same, "leftovers": leftovers})
        shutil.rmtree(out)

    for during_write in (1, 2):  # the first checkpoint (nothing to resume from yet) and a later one
        count_file = work / f"count{during_write}"
        count = (during_write, count_file)
        assert in_child(lambda count=count: (killing_at(None, *count), train(work / "count", corpus, False))) == 0
        shutil.rmtree(work / "count")
        for step in range(1, int(count_file.read_text()) + 1):
            out = work / f"write{during_write}-step{step}"
            kill = (step, during_write, out)
            status = in_child(lambda kill=kill: (killing_at(*kill[:2]), train(kill[2], corpus, False)))
            assert status == -signal.SIGKILL, f"the kill at step {step} of write {during_write} did not happen"
            resume_and_compare(out, f"write {during_write}, file-system step {step}")
    rng = random.Random(0)
    for trial in range(random_kills):
        out = work / f"random{trial}"
        pid = os.fork()
        if pid == 0:
            try:
                train(out, corpus, False)
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0.05, 1.5))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        if out.exists():
            resume_and_compare(out, f"random moment {trial}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
