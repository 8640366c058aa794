"""Training on two processes (gloo, CPU, launched by torchrun) equals training on one: DDP and FSDP2, for the
language-model, translation and classification tasks with gradient accumulation; checkpoints written at 2 processes
resume at 1 and back; a killed rank stops the job with one line naming it, and the run resumes.

The two processes are two torchrun "machines" (``--nnodes 2``, a c10d rendezvous on 127.0.0.1), and every job of
the 2-process side runs in that ONE launch (``distributed_jobs.py``): starting processes that import torch is most
of the cost here. The kill test launches ``glassformer train lm --nproc-per-node 2`` (torchrun -m glassformer)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from glassformer.cli.main import main
from glassformer.tolerance import tolerance

sys.path.insert(0, str(Path(__file__).parent))
from distributed_jobs import run_job  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch has no torch.distributed")
JOBS = Path(__file__).parent / "distributed_jobs.py"
TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog, then naps.\n" for i in range(120))


def torchrun(*args: str, **kwargs) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


def worker_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "last" / "model.safetensors")


def without_key_biases(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the key third of each attention's q/k/v bias: softmax ignores a constant added to every key's score,
    so the key bias's true gradient is 0 and what it gets is rounding noise — which Adam, dividing by that noise's
    own size, turns into full-sized steps whose sign depends on the order of the sums (1e-5 to 5e-2 relative here).
    Every other parameter must agree to 1e-5."""
    kept = dict(tensors)
    for name, tensor in tensors.items():
        if name.endswith("qkv_proj.bias"):
            query, _, value = tensor.chunk(3)
            kept[name] = torch.cat([query, value])
    return kept


def assert_same_weights(a: Path, b: Path, precision: str = "fp32") -> None:
    """fp32: each weight to 1e-5 of its norm. bf16: its values' 4 Adam steps of about lr = 3e-3 each agree, on
    average over the tensor, to ``tolerance("bf16")`` of their size (the weights themselves hardly move, so their
    own norm says nothing). On average: bfloat16's rounding noise is large enough that, as for the key biases above,
    Adam turns it into full-sized steps of either sign for the few values whose true gradient is about 0."""
    first, second = without_key_biases(weights(a)), without_key_biases(weights(b))
    assert first.keys() == second.keys()
    for name in first:
        if precision == "fp32":
            difference = (first[name] - second[name]).norm() / first[name].norm().clamp_min(1e-12)
            assert difference <= 1e-5, f"{name}: relative difference {difference:.2e} between {a.name} and {b.name}"
        else:
            difference, bound = (
                (first[name] - second[name]).abs().mean(),
                tolerance(precision, depth=2)["rtol"] * 4 * 3e-3,
            )
            assert difference <= bound, f"{name}: mean difference {difference:.2e} > {bound:.2e} in {precision}"


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records(run) if "loss" in r}


def evaluations(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k.startswith("valid_")} for r in records(run) if "valid_loss" in r]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_machines(*command: str) -> list[subprocess.Popen]:
    """Two torchrun launches as two "machines": ``--nnodes 2``, one process each, meeting at a c10d rendezvous on
    127.0.0.1 — what two hosts do, with the same flags (README)."""
    rendezvous = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-id", "glassformer-test",
                  "--rdzv-endpoint", f"127.0.0.1:{free_port()}"]  # fmt: skip
    return [
        subprocess.Popen(
            torchrun(*rendezvous, "--node-rank", str(rank), *command),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=worker_env(),
        )  # fmt: skip
        for rank in (0, 1)
    ]


def finished(nodes: list[subprocess.Popen]) -> None:
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][1][-3000:] + outputs[1][1][-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, write_toy_corpus, tiny_classification):
    """Every job: the one-process references here, the two-process ones on two torchrun "machines" (one process
    each) that meet at a rendezvous and run the whole plan in one process group."""
    base = tmp_path_factory.mktemp("distributed")
    text = base / "text.txt"
    text.write_text(TEXT)
    pairs = write_toy_corpus(base / "pairs.tsv")
    labelled, init = tiny_classification
    data = {"lm": str(text), "translate": str(pairs), "classify": str(labelled)}

    def job(task: str, name: str, **fields) -> dict:
        return {"task": task, "out": str(base / name), "data": data[task], "init": str(init), **fields}

    run_job(job("lm", "lm-1to2", max_steps=2, schedule_steps=4))  # the first half, resumed on 2 processes below
    plan = [job(task, f"{task}-{parallel}", parallel=parallel) for task in data for parallel in ("ddp", "fsdp")]
    plan += [job("lm", f"lm-{parallel}-bf16", parallel=parallel, precision="bf16") for parallel in ("ddp", "fsdp")]
    plan += [job("lm", "lm-ddp-fast", parallel="ddp", recipe="fast")]  # Muon's step on the all-reduced gradients
    plan += [
        job("lm", "lm-1to2", parallel="fsdp", resume=True, schedule_steps=4),
        job("lm", "lm-2to1", parallel="fsdp", max_steps=2, schedule_steps=4),  # resumed on 1 process below
    ]
    (base / "plan.json").write_text(json.dumps(plan))
    nodes = two_machines(str(JOBS), str(base / "plan.json"))
    for task in data:  # meanwhile, one process on whole batches
        run_job(job(task, f"{task}-1"))
    run_job(job("lm", "lm-1-bf16", precision="bf16"))
    run_job(job("lm", "lm-1-fast", recipe="fast"))
    finished(nodes)
    run_job(job("lm", "lm-2to1", resume=True, schedule_steps=4))
    return base


@pytest.mark.parametrize("task", ["lm", "translate", "classify"])
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_train_the_same_model_as_one(runs, task, parallel):
    """Same seed, same global batches, half of each per process, 2 accumulated micro-batches per step: the same
    weights after 4 steps (FSDP2 averages, not sums, the gradients on gloo — pytorch#162338 would show here), the
    same global loss logged at each step, and a plain model.safetensors that one process opens."""
    one, two = runs / f"{task}-1", runs / f"{task}-{parallel}"
    assert_same_weights(one, two)
    assert losses(two) == pytest.approx(losses(one), rel=1e-5)
    assert [e.keys() for e in evaluations(two)] == [e.keys() for e in evaluations(one)]
    for mine, reference in zip(evaluations(two), evaluations(one), strict=True):
        assert mine == pytest.approx(reference, rel=1e-5)  # rank 0's validation on the whole split
    assert len(records(two)) == len(records(one))  # one metrics.jsonl, written by rank 0 alone
    state = json.loads((two / "last" / "trainer_state.json").read_text())
    assert (
        state["processes"] == 2
        and state["step"] == json.loads((one / "last" / "trainer_state.json").read_text())["step"]
    )
    assert (two / "last" / "trainer_state" / ".metadata").is_file()  # the sharded state, through DCP


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_train_the_same_model_as_one_in_bfloat16(runs, parallel):
    """The same in bfloat16 autocast (auto's choice where it is native): each rank's half-batch products round
    differently from the whole batch's, so weights and losses agree within ``tolerance("bf16")``."""
    one, two = runs / "lm-1-bf16", runs / f"lm-{parallel}-bf16"
    assert_same_weights(one, two, "bf16")
    assert losses(two) == pytest.approx(losses(one), rel=tolerance("bf16", depth=2)["rtol"])
    assert json.loads((two / "last" / "trainer_state.json").read_text())["processes"] == 2


def test_two_processes_train_the_same_model_as_one_with_the_fast_recipe(runs):
    """Muon + AdamW, QK-norm, ReLU², zero-initialized projections and the warm-down: each rank orthogonalizes the
    same all-reduced gradients, so two processes end where one does — the same loss at every step, and the weights'
    4 updates of about lr = 3e-3 agreeing on average as the bf16 comparison asks. Not each weight to 1e-5 (measured:
    1e-4 to 1e-2 of each matrix's norm, mean differences ~1e-5): Newton–Schulz raises a gradient's small singular
    values ~3.4x per iteration, so the rounding differences of the all-reduce's sums grow with them, and the
    zero-initialized W_O and W_2 are nothing but those updates; AdamW's near-zero gradients do the rest, as for the
    key biases above."""
    assert_same_weights(runs / "lm-1-fast", runs / "lm-ddp-fast", precision="bf16")
    assert losses(runs / "lm-ddp-fast") == pytest.approx(losses(runs / "lm-1-fast"), rel=1e-5)
    assert json.loads((runs / "lm-ddp-fast" / "last" / "config.json").read_text())["qk_norm"]


def test_resume_at_another_number_of_processes(runs):
    """Saved by 1 process and continued by 2 (FSDP), saved by 2 (FSDP) and continued by 1: both end where the
    uninterrupted one-process run ends."""
    for resumed in ("lm-1to2", "lm-2to1"):
        assert_same_weights(runs / "lm-1", runs / resumed)
        assert losses(runs / resumed)[4] == pytest.approx(losses(runs / "lm-1")[4], rel=1e-5)


LM_FLAGS = ["--preset", "tiny", "--d-model", "32", "--d-ff", "64", "--block-size", "16", "--dropout", "0",
            "--batch-size", "4", "--lr", "3e-3", "--warmup-steps", "1", "--device", "cpu", "--precision", "fp32",
            "--seed", "3", "--quiet"]  # fmt: skip


def launch_and_wait_for_a_checkpoint(out: Path, *flags: str, after: int = 0) -> tuple[subprocess.Popen, list]:
    """``glassformer train lm --nproc-per-node 2`` running until ``last/`` holds a step past ``after``; the launcher
    and its two workers."""
    import psutil

    command = [sys.executable, "-m", "glassformer", "train", "lm", "--out", str(out), "--max-steps", "100000",
               "--eval-every", "3", "--nproc-per-node", "2", *flags, *LM_FLAGS]  # fmt: skip
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=worker_env())
    deadline = time.monotonic() + 120
    while not ((out / "last" / "COMPLETE").is_file() and saved_step(out) > after):
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()[1][-2000:]
        time.sleep(0.2)
    workers = [
        p for p in psutil.Process(launcher.pid).children(recursive=True) if "glassformer" in " ".join(p.cmdline())
    ]
    return launcher, workers


def saved_step(out: Path) -> int:
    try:
        return json.loads((out / "last" / "trainer_state.json").read_text())["step"]
    except (OSError, ValueError):
        return -1


def rank(workers: list, number: int):
    return next(p for p in workers if p.environ().get("RANK") == str(number))


def test_a_signal_or_a_killed_rank_ends_the_job_with_one_line_and_the_run_resumes(runs, tmp_path):
    """SIGTERM to rank 1 alone: the ranks agree to stop at the same step, `last/` is saved there, exit 130 and one
    line. Then, resumed on 2 processes, rank 1 SIGKILLed: the job ends within 60 s, one line names the rank and the
    signal, no worker is left; the run resumes again (1 process)."""
    import psutil

    out = tmp_path / "run"
    try:
        signal_then_kill(out, runs / "text.txt", psutil)
    finally:  # a failed check leaves no process behind
        for process in psutil.Process().children(recursive=True):
            process.kill()
    step = saved_step(out)
    assert main(["train", "lm", "--out", str(out), "--resume", "--max-steps", str(step + 2), *LM_FLAGS]) == 0
    assert saved_step(out) == step + 2


def signal_then_kill(out: Path, text: Path, psutil) -> None:
    launcher, workers = launch_and_wait_for_a_checkpoint(out, "--data", str(text))
    rank(workers, 1).send_signal(signal.SIGTERM)
    _, stderr = launcher.communicate(timeout=90)
    assert launcher.returncode == 130, stderr[-2000:]
    assert "last/ is saved — continue with --resume" in stderr.strip().splitlines()[-1]
    stopped = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert stopped == {"step": saved_step(out), "interrupted": "SIGTERM"}  # logged once, at the step of last/

    launcher, workers = launch_and_wait_for_a_checkpoint(out, "--resume", after=saved_step(out))
    rank(workers, 1).send_signal(signal.SIGKILL)
    killed = time.monotonic()
    _, stderr = launcher.communicate(timeout=90)
    assert time.monotonic() - killed < 60
    assert launcher.returncode != 0
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("glassformer: error: rank 1 of 2") and "SIGKILL" in last and "--resume" in last
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in workers)
