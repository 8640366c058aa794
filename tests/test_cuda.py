"""CUDA end to end: each result on the GPU equals the CPU float32 one within the tolerance of the precision used.

Skipped (with the reason) where torch sees no CUDA GPU, as on CI; run them on a GPU machine with
``python -m pytest tests/test_cuda.py``.
"""

import json

import pytest
import torch

from glassformer import GPT, Bert, BertConfig, GPTConfig, Transformer, TransformerConfig, runtime
from glassformer.generation.seq2seq import translate_ids

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU: torch.cuda.is_available() is False"),
]

CUDA = torch.device("cuda")
TOLERANCE = {"fp32": dict(atol=1e-4, rtol=1e-4), "bf16": dict(atol=0.1, rtol=0.05), "fp16": dict(atol=0.02, rtol=0.02)}


@pytest.fixture(autouse=True)
def _no_tf32():
    """float32 on the GPU computed in float32 (no TF32 rounding), so that it matches the CPU."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def tiny_gpt(**fields) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=64, max_seq_length=48, d_model=32, num_layers=2, num_heads=4, d_ff=64, **fields)
    return GPT(config).eval()


def tiny_transformer() -> Transformer:
    torch.manual_seed(0)
    config = TransformerConfig(
        src_vocab_size=40, tgt_vocab_size=40, d_model=32, num_layers=2, num_heads=4, d_ff=64, max_seq_length=32,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, norm_first=True, dropout=0.0,
    )  # fmt: skip
    return Transformer(config).eval()


def test_placement_auto_picks_the_gpu_and_a_native_precision():
    placement = runtime.place("auto", "auto")
    assert placement.device.type == "cuda"
    assert placement.precision in runtime.native_precisions("cuda", placement.device.index)
    assert (
        "flash" in runtime.environment("cuda")["attention kernels"]
        or "memory-efficient" in runtime.environment("cuda")["attention kernels"]
    )


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_gpt_logits_on_the_gpu_equal_the_cpu(precision):
    if precision not in runtime.native_precisions("cuda"):
        pytest.skip(f"{precision} is not native on this GPU")
    model = tiny_gpt()
    ids = torch.randint(0, 64, (3, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(ids)
        runtime.place_model(model, "cuda", precision)
        got = model(ids.to(CUDA)).float().cpu()
    torch.testing.assert_close(got, expected, **TOLERANCE[precision])


@pytest.mark.parametrize("llama", [False, True])
def test_greedy_generation_with_the_cache_equals_the_cpu(llama):
    model = tiny_gpt(**(dict(norm="rmsnorm", positional="rope", gated_ffn=True, activation="silu") if llama else {}))
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(1))
    expected = model.generate(ids, max_new_tokens=12)
    model.to(CUDA)
    got = model.generate(ids, max_new_tokens=12)  # the prompt follows the model to the GPU
    assert got.device.type == "cuda"
    assert torch.equal(got.cpu(), expected)
    assert torch.equal(model.generate(ids, max_new_tokens=12, use_cache=False).cpu(), expected)


def test_beam_search_translation_equals_the_cpu():
    model = tiny_transformer()
    src = torch.tensor([[5, 6, 7, 8, 2], [9, 10, 2, 0, 0]])
    expected = translate_ids(model, src, num_beams=4)
    model.to(CUDA)
    assert translate_ids(model, src.to(CUDA), num_beams=4) == expected


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_bert_encoding_on_the_gpu_equals_the_cpu(precision):
    if precision not in runtime.native_precisions("cuda"):
        pytest.skip(f"{precision} is not native on this GPU")
    torch.manual_seed(0)
    model = Bert(BertConfig(vocab_size=50, max_seq_length=32, d_model=32, num_layers=2, num_heads=4, d_ff=64)).eval()
    ids = torch.randint(1, 50, (2, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    with torch.no_grad():
        expected = model(ids, mask)
        runtime.place_model(model, "cuda", precision)
        got = model(ids.to(CUDA), mask.to(CUDA)).float().cpu()
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], **TOLERANCE[precision])


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_steps_on_the_gpu_follow_the_cpu(tmp_path, precision):
    """Three Trainer steps of a translation model on the same batches: the losses agree with the CPU float32 run
    within the precision's tolerance (fp16 through the gradient scaler)."""
    from glassformer.training.loop import TrainConfig, Trainer

    if precision != "fp32" and precision not in runtime.native_precisions("cuda"):
        pytest.skip(f"{precision} is not native on this GPU")

    losses = {}
    for device, prec in (("cpu", "fp32"), ("cuda", precision)):
        task = _copy_task(tiny_transformer())
        config = TrainConfig(
            max_steps=3, lr=1e-3, warmup_steps=1, eval_every=3, log_every=1, device=device, precision=prec,
            progress=False, grad_clip=None,
        )  # fmt: skip
        Trainer(task, config, tmp_path / f"{device}-{prec}").fit()
        records = [json.loads(line) for line in (tmp_path / f"{device}-{prec}" / "metrics.jsonl").open()]
        losses[device] = [r["loss"] for r in records if "loss" in r]
        assert next(p for p in task.model.parameters()).device.type == device
    torch.testing.assert_close(torch.tensor(losses["cuda"]), torch.tensor(losses["cpu"]), atol=0.05, rtol=0.02)


def _copy_task(model):
    """A task that feeds fixed copy-task batches (source = target) of a tiny vocabulary."""
    from glassformer.data.parallel import collate

    generator = torch.Generator().manual_seed(0)
    examples = []
    for _ in range(16):
        seq = torch.randint(3, 40, (int(torch.randint(3, 9, (1,), generator=generator)),), generator=generator)
        examples.append((seq.tolist() + [2], [1, *seq.tolist(), 2]))

    class CopyTask:
        def __init__(self):
            self.model = model

        def train_batch(self, _generator):
            return collate(examples, 0)

        def valid_batches(self):
            yield collate(examples, 0)

        def loss(self, batch):
            from glassformer.training.losses import fused_label_smoothed_cross_entropy

            logits = self.model(batch.src, batch.tgt_in)
            return fused_label_smoothed_cross_entropy(logits.flatten(0, 1), batch.tgt_out.flatten(), 0.0)

        def save(self, directory):
            self.model.save_pretrained(directory)

    return CopyTask()


def test_a_checkpoint_saved_on_the_gpu_loads_on_the_cpu(tmp_path):
    model = tiny_gpt().to(CUDA)
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(ids.to(CUDA)).cpu()
    model.save_pretrained(tmp_path)
    loaded = GPT.from_pretrained(tmp_path)
    assert next(loaded.parameters()).device.type == "cpu"
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), expected, **TOLERANCE["fp32"])
        loaded.to(CUDA)  # and back
        torch.testing.assert_close(loaded(ids.to(CUDA)).cpu(), expected, **TOLERANCE["fp32"])


def test_fused_attention_kernels_serve_training_and_cached_decoding():
    """The causal self-attention of a whole sequence goes through is_causal (flash attention where available);
    decoding with the cache through the same fused function with a mask or none."""
    model = tiny_gpt(dropout=0.1, attention_dropout=0.1).train().to(CUDA)
    ids = torch.randint(0, 64, (4, 32), device=CUDA)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled="bf16" in runtime.native_precisions("cuda")):
        loss = torch.nn.functional.cross_entropy(model(ids).flatten(0, 1).float(), ids.flatten())
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def test_the_cli_runs_on_the_gpu(gpt_dir):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "glassformer", "generate", "--model", str(gpt_dir), "--prompt", "the cat",
         "--max-new-tokens", "5", "--device", "cuda", "--precision", "fp32"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "device cuda" in result.stderr
