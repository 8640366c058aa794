"""Training on several processes with ``torch.distributed``: the process group, how a batch is shared, wrapping.

Launched by ``torchrun`` (or ``glassformer train ... --nproc-per-node N``, which runs torchrun), each process reads
its place from the environment torchrun sets — ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR/PORT`` — and
joins one process group: ``gloo`` on CPUs, ``nccl`` on CUDA GPUs (one process per GPU, ``cuda:LOCAL_RANK``).
Without those variables there is one process and nothing here communicates.

    global batch    --batch-size / --max-tokens: what ONE optimizer step sees, whatever the number of processes
    a rank's share  items[rank::world_size] of each global batch (``Shard.take``)
    loss            each rank's mean loss L_r over its c_r tokens is weighted by  w_r = N · c_r / C,  C = Σ_r c_r,
                    so that the gradients' average over ranks (what DDP and FSDP compute) is the gradient of the
                    global mean  Σ_r c_r L_r / C  — the loss one process computes on the whole batch
    strategies      ddp:  DistributedDataParallel, every rank holds the whole model and optimizer state
                    fsdp: FSDP2 (``fully_shard`` on each layer, then on the root, over a 1-D device mesh): each rank
                          holds 1/N of the parameters, gradients and optimizer state, gathered layer by layer
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from glassformer import runtime

PARALLEL = ("ddp", "fsdp")
TIMEOUT = datetime.timedelta(minutes=10)  # a collective that waits longer than this ends the job with an error
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class World:
    """Where this process stands: ``rank`` of ``size`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 owns the run directory, prints, logs and writes the files every process shares."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def sum(self, values: Sequence[float]) -> list[float]:
        """Each value summed over every process (one all-reduce; none with one process)."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device())
        dist.all_reduce(tensor)
        return tensor.tolist()

    def from_main(self, compute: Callable[[], T]) -> T:
        """``compute()`` run on rank 0 only and its result sent to every rank (e.g. a tokenizer trained once);
        an exception on rank 0 is raised on every rank with the same message."""
        if not self.distributed:
            return compute()
        box: list[Any] = [None]
        if self.is_main:
            try:
                box = [("ok", compute())]
            except Exception as e:  # every rank must learn of it, or the others wait forever
                box = [("error", (type(e), str(e)))]
        dist.broadcast_object_list(box, src=0)
        status, value = box[0]
        if status == "error":
            kind, message = value
            try:
                error = kind(message)  # the same kind, so the command line reports it the same way
            except TypeError:  # a kind whose constructor wants more than a message
                error = (ValueError if issubclass(kind, ValueError) else RuntimeError)(message)
            raise error
        return value

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def current() -> World:
    """This process's place in the process group (one process of one when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextlib.contextmanager
def process_group(device: str = "auto") -> Iterator[World]:
    """Join the process group torchrun describes (if it describes one and none is joined yet) for the ``with``
    block, and leave it after: gloo for the CPU, nccl for CUDA with ``cuda:LOCAL_RANK`` as this process's GPU."""
    if not launched_by_torchrun() or dist.is_initialized():
        yield current()
        return
    local_rank, size = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"])
    kind = runtime.resolve_device(device).type
    if kind == "cuda":
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ValueError(
                f"nccl needs one GPU per process: process {local_rank} on this machine but it has {count} GPU(s); "
                "give --nproc-per-node at most the number of GPUs, or --device cpu"
            )
        torch.cuda.set_device(local_rank)
    elif kind != "cpu":
        raise ValueError(f"training on several processes runs on CPUs (gloo) or CUDA GPUs (nccl), not {kind}")
    dist.init_process_group("nccl" if kind == "cuda" else "gloo", timeout=TIMEOUT)
    try:
        world = current()
        if world.size != size:
            raise RuntimeError(f"torchrun said {size} processes but the group has {world.size}")
        yield world
    finally:
        dist.destroy_process_group()


def device_for(device: str, world: World) -> str:
    """The device string of this process: ``cuda`` (or ``auto`` on a GPU machine) is this process's own GPU."""
    if world.distributed and runtime.resolve_device(device).type == "cuda":
        return f"cuda:{world.local_rank}"
    return device


@dataclasses.dataclass
class Shard:
    """The part of each global batch that this rank trains on: ``take(items) = items[rank::world_size]``.

    A global batch with fewer items than processes leaves some ranks without one; such a rank trains on the
    first item with weight 0 (``idle`` is True until the next ``take``), so every rank runs the same collectives.
    """

    rank: int = 0
    world_size: int = 1
    idle: bool = False

    def take(self, items: Sequence[T] | torch.Tensor) -> Sequence[T] | torch.Tensor:
        mine = items[self.rank :: self.world_size]
        self.idle = len(mine) == 0
        return items[:1] if self.idle else mine


def check_divisible(name: str, value: int, world: World) -> None:
    """A global batch of ``value`` items must split evenly: one line naming the flag and the fix."""
    if value % world.size:
        raise ValueError(
            f"--{name.replace('_', '-')} {value} is the global batch and must be divisible by the {world.size} "
            f"processes; use a multiple of {world.size}"
        )


# --- wrapping ---------------------------------------------------------------------------------------------------


def blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated layers of any glassformer model (encoder, decoder and GPT / BERT layers): FSDP's units."""
    from glassformer.nn.layers import DecoderLayer, EncoderLayer

    return [m for m in model.modules() if isinstance(m, EncoderLayer | DecoderLayer)]


def wrap(model: nn.Module, parallel: str, world: World, device: torch.device) -> nn.Module:
    """The module to run forward through: ``model`` itself with one process; a ``DistributedDataParallel`` around
    it (ddp); or ``model`` sharded in place by FSDP2 (fsdp: each layer, then the root, on a device mesh)."""
    if not world.distributed:
        return model
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if parallel == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        # logits that come out of a matrix product on 3-D input are views; FSDP2 warns that an in-place change of
        # them would skip its hooks — no loss here changes logits in place (the equivalence tests would see it)
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
        mesh = init_device_mesh(device.type, (world.size,))
        for block in blocks(model):
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    raise ValueError(f"unknown parallel strategy {parallel!r}; choose one of {', '.join(PARALLEL)}")


@contextlib.contextmanager
def gradient_sync(wrapped: nn.Module, sync: bool) -> Iterator[None]:
    """Gradient accumulation: the backward passes inside the block reduce gradients across ranks only if ``sync``
    (the last micro-step of an optimizer step); the others only add to each rank's own gradients."""
    if sync:
        yield
    elif hasattr(wrapped, "no_sync"):  # DistributedDataParallel
        with wrapped.no_sync():
            yield
    elif hasattr(wrapped, "set_requires_gradient_sync"):  # FSDP2
        wrapped.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            wrapped.set_requires_gradient_sync(True)
    else:
        yield


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights on the CPU, gathered from every rank (all ranks call it; rank 0 gets them), each
    tied weight once under its first name — what ``save_pretrained`` writes."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    first: dict[int, str] = {}
    tied = {n for n, p in model.named_parameters(remove_duplicate=False) if first.setdefault(id(p), n) != n}
    return {name: tensor for name, tensor in state.items() if name not in tied}
