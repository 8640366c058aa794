"""The parts of multi-process training that need no second process: how a global batch is shared, the refusals of
impossible setups, and the command line's relaunch under torchrun."""

import os
import warnings

import pytest
import torch

from glassformer.cli.main import main
from glassformer.training import distributed
from glassformer.training.config import TrainConfig


def test_each_rank_takes_every_nth_item_and_together_they_take_all():
    items = list(range(7))
    shares = [distributed.Shard(rank, 3).take(items) for rank in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]
    assert sorted(sum(shares, [])) == items
    starts = torch.arange(8)
    assert distributed.Shard(1, 2).take(starts).tolist() == [1, 3, 5, 7]


def test_a_rank_without_items_trains_on_one_with_weight_zero():
    shard = distributed.Shard(2, 3)
    assert shard.take([10, 11]) == [10] and shard.idle  # the loop weights its loss by 0
    assert shard.take([10, 11, 12]) == [12] and not shard.idle


def test_a_global_batch_that_does_not_split_evenly_is_refused():
    distributed.check_divisible("batch_size", 8, distributed.World(0, 2))
    with pytest.raises(ValueError, match="--batch-size 9 is the global batch and must be divisible by the 2 proc"):
        distributed.check_divisible("batch_size", 9, distributed.World(0, 2))


def test_one_process_is_a_world_of_one():
    world = distributed.current()
    assert (world.rank, world.size, world.is_main, world.distributed) == (0, 1, True, False)
    assert world.sum([1.5, 2]) == [1.5, 2]
    assert world.from_main(lambda: "tokenizer") == "tokenizer"
    with distributed.process_group("cpu") as joined:  # no torchrun: nothing joined
        assert joined == world and not torch.distributed.is_initialized()


def test_nccl_without_gpus_and_unknown_strategies_are_refused(monkeypatch):
    with pytest.raises(ValueError, match="parallel strategy 'zero'"):
        TrainConfig(parallel="zero")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ValueError, match="no CUDA GPU"), distributed.process_group("cuda"):
        pass


def test_fsdp_shards_each_layer_of_every_model_family():
    from glassformer import GPT, GPTConfig, Transformer, TransformerConfig
    from glassformer.models.bert import Bert, BertConfig

    small = dict(d_model=16, num_heads=2, d_ff=32, max_seq_length=8)
    assert len(distributed.blocks(GPT(GPTConfig(vocab_size=11, num_layers=3, **small)))) == 3
    assert len(distributed.blocks(Transformer(TransformerConfig(src_vocab_size=11, tgt_vocab_size=11, num_layers=2,
                                                                 **small)))) == 4  # fmt: skip
    assert len(distributed.blocks(Bert(BertConfig(vocab_size=11, num_layers=2, **small)))) == 2


@pytest.mark.parametrize("value", ["0", "-2"])
def test_a_bad_process_count_is_one_line(value, tmp_path, capsys):
    assert main(["train", "lm", "--out", str(tmp_path / "run"), "--nproc-per-node", value]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "--nproc-per-node" in error
    assert not (tmp_path / "run").exists()


def test_the_relaunch_drops_only_its_own_flag(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr("glassformer.training.launch.run_torchrun", lambda n, argv: seen.append((n, argv)) or 3)
    out = str(tmp_path / "run")
    for flag in (["--nproc-per-node", "2"], ["--nproc-per-node=2"]):
        assert main(["train", "lm", "--out", out, *flag, "--max-steps", "5"]) == 3  # the workers' exit status
    assert seen == [(2, ["train", "lm", "--out", out, "--max-steps", "5"])] * 2


class Unsharded:
    """A task without ``shard``: it cannot split its batches."""

    def __init__(self):
        self.model = torch.nn.Linear(2, 2)


def test_setups_that_cannot_work_on_several_processes_are_refused_before_training(monkeypatch, tmp_path):
    from glassformer.training.loop import Trainer

    monkeypatch.setattr(distributed, "current", lambda: distributed.World(0, 2))  # as rank 0 of 2 would see it
    with pytest.raises(ValueError, match="Unsharded has no `shard`"):
        Trainer(Unsharded(), TrainConfig(device="cpu", precision="fp32"), tmp_path)
    with warnings.catch_warnings(), pytest.raises(ValueError, match="fsdp does not scale float16"):
        warnings.simplefilter("ignore")  # float16 is emulated on most CPUs: place() says so
        Trainer(Unsharded(), TrainConfig(device="cpu", precision="fp16", parallel="fsdp"), tmp_path)


def test_a_global_batch_that_cannot_be_shared_is_refused_before_any_process_starts(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("glassformer.training.launch.run_torchrun", lambda *_: pytest.fail("launched"))
    assert main(["train", "lm", "--out", str(tmp_path / "run"), "--batch-size", "7", "--nproc-per-node", "2"]) == 2
    assert capsys.readouterr().err.strip() == (
        "glassformer: error: --batch-size 7 is the global batch and must be divisible by the 2 processes; "
        "use a multiple of 2"
    )


@pytest.mark.parametrize(("exitcode", "says"), [(-9, "was killed by SIGKILL"), (2, "stopped with exit status 2")])
def test_the_launcher_names_the_rank_that_failed_and_how(monkeypatch, capsys, exitcode, says):
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from glassformer.training.launch import run_torchrun

    def fail(args):
        raise ChildFailedError("glassformer", {1: ProcessFailure(local_rank=1, pid=4242, exitcode=exitcode,
                                                                 error_file="")})  # fmt: skip

    monkeypatch.setattr(torchrun, "run", fail)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert run_torchrun(2, ["train", "lm", "--out", "x"]) == (1 if exitcode < 0 else exitcode)
    assert "OMP_NUM_THREADS" not in os.environ  # set for the workers only, not left behind in the caller
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"glassformer: error: rank 1 of 2 (pid 4242) {says} after ")
    assert ("--resume" in line) == (exitcode < 0)  # a signal leaves a checkpoint to resume; an error explains itself
