"""The trainer's state in a checkpoint folder, beside the model: optimizer, random generators, step, data position.

    trainer_state.json          step, best score, the optimizer's param groups, the task's data position, the
                                gradient scaler, how many processes wrote it                     (written by rank 0)
    one process:
    trainer_state.safetensors   "optimizer.{parameter name}.{exp_avg|exp_avg_sq|step}", "rng.torch", "rng.data"
    several processes:
    trainer_state/              torch.distributed.checkpoint (DCP): every rank writes its shard of the model
                                ("model.{name}") and of the optimizer state, its own "rng.torch.{rank}", "rng.data"

The optimizer state is keyed by parameter name (``torch.distributed.checkpoint.state_dict`` maps names to the
parameters of a plain, DDP or FSDP model), so a checkpoint written by N processes resumes on M: DCP re-shards
what each rank reads, and a one-process file is read whole by every rank (FSDP keeps each rank's part). Only
tensors go to DCP; everything else is JSON — nothing here is ever unpickled.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from glassformer.files import read_json
from glassformer.training.distributed import World

STATE_JSON, STATE_TENSORS, STATE_SHARDS = "trainer_state.json", "trainer_state.safetensors", "trainer_state"


def _parts(optimizer) -> torch.optim.Optimizer | tuple[torch.optim.Optimizer, ...]:
    """The optimizer, or the optimizers of an ``OptimizerGroup`` (Muon + AdamW): ``torch.distributed.checkpoint``
    keys the state of all of them by parameter name, in one dictionary."""
    return getattr(optimizer, "optimizers", optimizer)


def _split(optimizer_state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``{"optimizer.{name}.{key}": tensor}`` and the non-tensor values ``{"{name}.{key}": value}``."""
    tensors, scalars = {}, {}
    for name, state in optimizer_state["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{name}.{key}"] = value
            else:
                scalars[f"{name}.{key}"] = value
    return tensors, scalars


def _join(tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> dict[str, dict[str, Any]]:
    state: dict[str, dict[str, Any]] = {}
    for full, value in [*tensors.items(), *scalars.items()]:
        name, key = full.removeprefix("optimizer.").rsplit(".", 1)
        state.setdefault(name, {})[key] = value
    return state


def write(
    folder: Path,
    world: World,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_generator: torch.Generator,
    record: dict[str, Any],
) -> None:
    """Every rank calls this with the same ``folder``; ``record`` (step, scores, task position) goes to the JSON."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    optimizer_state = get_optimizer_state_dict(model, _parts(optimizer))
    tensors, scalars = _split(optimizer_state)
    cuda = next(model.parameters()).device.type == "cuda"
    if world.distributed:
        import torch.distributed.checkpoint as dcp

        tensors.update({f"model.{k}": v for k, v in get_model_state_dict(model).items()})
        tensors[f"rng.torch.{world.rank}"] = torch.get_rng_state()
        if cuda:
            tensors[f"rng.cuda.{world.rank}"] = torch.cuda.get_rng_state()
        tensors["rng.data"] = data_generator.get_state()
        dcp.save(tensors, checkpoint_id=folder / STATE_SHARDS)
    else:
        tensors.update({"rng.torch": torch.get_rng_state(), "rng.data": data_generator.get_state()})
        if cuda:
            tensors["rng.cuda"] = torch.cuda.get_rng_state()
        save_file({k: v.contiguous() for k, v in tensors.items()}, folder / STATE_TENSORS)
    if world.is_main:
        state_json = {"param_groups": optimizer_state["param_groups"], "scalars": scalars, "processes": world.size}
        (folder / STATE_JSON).write_text(json.dumps({**state_json, **record}, indent=1))


def read(
    folder: Path, world: World, model: nn.Module, optimizer: torch.optim.Optimizer, data_generator: torch.Generator
) -> dict[str, Any]:
    """Load what ``write`` wrote (by any number of processes) into ``model`` (the sharded state only; a one-process
    checkpoint's model is the one ``from_pretrained`` already read), ``optimizer`` and the random generators.
    Returns the JSON record."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    record = read_json(folder / STATE_JSON, "trainer state")
    groups = record["param_groups"]
    for group in groups:  # JSON's lists back to the tuples the optimizers were made with
        for key in ("betas", "ns_coefficients"):
            if key in group:
                group[key] = tuple(group[key])
    cuda = next(model.parameters()).device.type == "cuda"
    if (folder / STATE_SHARDS).is_dir():
        tensors = _read_shards(folder / STATE_SHARDS, world, model, optimizer, cuda)
        rng_torch, rng_cuda = tensors.get(f"rng.torch.{world.rank}"), tensors.get(f"rng.cuda.{world.rank}")
        set_model_state_dict(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        options = StateDictOptions(strict=False)
    else:
        tensors = load_file(folder / STATE_TENSORS)
        rng_torch, rng_cuda = tensors.get("rng.torch"), tensors.get("rng.cuda")
        if world.rank > 0:  # a one-process checkpoint has one generator: the other ranks start their own
            rng_torch = rng_cuda = None
        tensors, scalars, groups = _by_name(tensors, record["scalars"], groups, model, optimizer)
        record["scalars"] = scalars
        # each rank keeps its part of the whole state; parameters that never had a gradient (an unused pooler) have none
        options = StateDictOptions(full_state_dict=world.distributed, strict=False)
    optimizer_tensors = {k: v for k, v in tensors.items() if k.startswith("optimizer.")}
    state = {"state": _join(optimizer_tensors, record["scalars"]), "param_groups": groups}
    set_optimizer_state_dict(model, _parts(optimizer), state, options=options)
    if rng_torch is not None:
        torch.set_rng_state(rng_torch)
    if rng_cuda is not None and cuda:
        torch.cuda.set_rng_state(rng_cuda)
    data_generator.set_state(tensors["rng.data"])
    return record


def _read_shards(path: Path, world: World, model, optimizer, cuda: bool) -> dict[str, torch.Tensor]:
    """The DCP checkpoint read into tensors shaped (and sharded) like this run's own: DCP fills each from the
    shards that hold its part, whatever the number of processes that wrote them."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    saved = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    tensors, _ = _split(get_optimizer_state_dict(model, _parts(optimizer)))  # creates the state to fill, if none yet
    tensors = {k: v for k, v in tensors.items() if k in saved}  # parameters that never had a gradient have none
    tensors.update({f"model.{k}": v for k, v in get_model_state_dict(model).items()})
    tensors["rng.data"] = torch.get_rng_state().new_empty(saved["rng.data"].size)
    for name in (f"rng.torch.{world.rank}", f"rng.cuda.{world.rank}" if cuda else None):
        if name in saved:  # a rank that did not exist when the checkpoint was written keeps its own seed
            tensors[name] = torch.empty(saved[name].size, dtype=torch.uint8)
    with warnings.catch_warnings():  # one process reading what several wrote is what DCP is for: no warning
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(tensors, checkpoint_id=path)
    return tensors


def _by_name(tensors: dict, scalars: dict, groups: list[dict], model: nn.Module, optimizer) -> tuple[dict, dict, list]:
    """Checkpoints written before the optimizer state was keyed by name number the parameters in the optimizer's
    order ("optimizer.3.exp_avg"): rename them (the order is fixed by ``make_optimizer``)."""
    if not any(k.startswith("optimizer.") and k.split(".")[1].isdigit() and k.count(".") == 2 for k in tensors):
        return tensors, scalars, groups
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    renamed = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, what = key.split(".")
            key = f"optimizer.{order[int(index)]}.{what}"
        renamed[key] = value
    scalars = {f"{order[int(k.split('.')[0])]}.{k.split('.', 1)[1]}": v for k, v in scalars.items()}
    groups = [{**group, "params": [order[i] for i in group["params"]]} for group in groups]
    return renamed, scalars, groups
