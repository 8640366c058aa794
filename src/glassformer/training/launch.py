"""``glassformer train ... --nproc-per-node N``: the same command on N processes of this machine, through torchrun.

It is what ``torchrun --standalone --nproc-per-node N -m glassformer train ...`` does (PyTorch's launcher, run in
this process): a rendezvous on a free local port, N workers with ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` set,
and a watch over them. When a worker dies, torchrun stops the others and this prints one line naming the rank
and the cause. For several machines run torchrun itself on each (README: "Train on several processes").
"""

from __future__ import annotations

import logging
import os
import sys
import time


def run_torchrun(nproc_per_node: int, argv: list[str]) -> int:
    """Run ``glassformer *argv`` on ``nproc_per_node`` local processes; returns the exit status (0: every worker
    finished; else the failing worker's status, 1 for a signal, 130 when stopped by Ctrl-C or SIGTERM)."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = torchrun.parse_args(
        ["--standalone", "--nproc-per-node", str(nproc_per_node), "--monitor-interval", "0.5",
         "-m", "glassformer", *argv]
    )  # fmt: skip
    logging.getLogger("torch.distributed.elastic").setLevel(logging.ERROR)  # the workers speak for themselves
    # the machine's cores shared among the processes (torchrun would set 1 thread each, with a warning)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = threads or str(max(1, cores // nproc_per_node))  # the workers inherit it
    started = time.monotonic()
    try:
        torchrun.run(args)
    except ChildFailedError as failed:
        rank, failure = failed.get_first_failure()
        where = f"rank {rank} of {nproc_per_node} (pid {failure.pid})"
        took = f"after {time.monotonic() - started:.0f} s; torchrun stopped the other ranks"
        if failure.exitcode < 0:  # killed: the run's last complete checkpoint is what is left
            message = f"{where} was killed by {failure.signal_name()} {took} — the last complete checkpoint is kept: "
            message += "continue with --resume"
        elif failure.exitcode == 130:  # Ctrl-C or SIGTERM reached a worker: every rank saved last/ at one step
            message = f"{where} was stopped by a signal {took}; last/ is saved — continue with --resume"
        else:  # it said why itself, in the line above
            message = f"{where} stopped with exit status {failure.exitcode} {took} (its error is above)"
        print(f"glassformer: error: {message}", file=sys.stderr)
        return failure.exitcode if failure.exitcode > 0 else 1
    except SignalException as stop:
        print(f"glassformer: stopped by {stop.sigval.name}; continue with --resume", file=sys.stderr)
        return 130
    finally:  # this process's own setting as it was (a caller's later subprocesses must not inherit ours)
        if threads is None:
            del os.environ["OMP_NUM_THREADS"]
    return 0
