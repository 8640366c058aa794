"""The fast recipe's changes, each against its formula, and the recipes as a run sees them."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from glassformer.models.bert import Bert, BertConfig
from glassformer.models.gpt import GPT, GPTConfig
from glassformer.models.transformer import Transformer, TransformerConfig
from glassformer.nn.activation import ACTIVATIONS
from glassformer.nn.attention import MultiHeadAttention
from glassformer.nn.config import BlockConfig
from glassformer.nn.feedforward import PositionWiseFeedForward
from glassformer.nn.linear import packed_weights
from glassformer.tokenizer import Tokenizer
from glassformer.training import recipes
from glassformer.training.config import TrainConfig
from glassformer.training.lm import LanguageModelingTask, lm_train_config
from glassformer.training.loop import Trainer
from glassformer.training.optimizers import OptimizerGroup, block_matrices, make_optimizer
from glassformer.training.schedules import lr_multiplier
from glassformer.training.translation import translation_train_config

TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. " * 30
FAST_BLOCK = dict(qk_norm=True, activation="relu2", zero_init_projections=True)


def test_relu2_is_relu_squared_on_every_path():
    x = torch.linspace(-3, 3, 13)
    assert torch.equal(ACTIVATIONS["relu2"](x), torch.where(x > 0, x * x, torch.zeros_like(x)))
    torch.manual_seed(0)
    ffn = PositionWiseFeedForward(BlockConfig(d_model=16, d_ff=32, activation="relu2")).eval()
    h = torch.randn(3, 40, 16)
    reference = F.linear(F.relu(F.linear(h, ffn.fc1.weight, ffn.fc1.bias)) ** 2, ffn.fc2.weight, ffn.fc2.bias)
    with torch.no_grad():
        torch.testing.assert_close(ffn(h), reference)
        with packed_weights(ffn):  # oneDNN has no ReLU² post-op: the activation runs apart, same result
            torch.testing.assert_close(ffn(h), reference)


def rms(x, eps):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


@pytest.mark.parametrize("need_weights", [False, True])
def test_qk_norm_normalizes_each_heads_queries_and_keys(need_weights):
    """softmax(RMS(q) RMS(k)ᵀ / sqrt(d_k)) v, head by head, written out against the module (fused and reference
    paths); the logits' size no longer grows with the weights'."""
    torch.manual_seed(0)
    attention = MultiHeadAttention(BlockConfig(d_model=16, num_heads=2, qk_norm=True, layer_norm_eps=1e-6)).eval()
    x = torch.randn(2, 5, 16) * 3
    q, k, v = F.linear(x, attention.qkv_proj.weight, attention.qkv_proj.bias).split(16, dim=-1)
    outputs = []
    for h in (slice(0, 8), slice(8, 16)):
        logits = rms(q[..., h], 1e-6) @ rms(k[..., h], 1e-6).transpose(1, 2) / math.sqrt(8)
        assert logits.abs().max() <= math.sqrt(8) + 1e-4  # |q̂ · k̂| <= d_k: bounded by the head's size
        outputs.append(torch.softmax(logits, dim=-1) @ v[..., h])
    expected = F.linear(torch.cat(outputs, dim=-1), attention.out_proj.weight, attention.out_proj.bias)
    with torch.no_grad():
        out, _ = attention(x, x, x, need_weights=need_weights)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        attention.qkv_proj.weight[:16].mul_(100)  # queries 100 times larger: the same attention
        attention.qkv_proj.bias[:16].mul_(100)
        torch.testing.assert_close(attention(x, x, x, need_weights=need_weights)[0], expected, rtol=1e-4, atol=1e-4)


def test_qk_norm_in_cross_attention_and_cached_decoding():
    """The memory's keys normalized once (``project_kv``) give the same cross-attention as normalizing them at every
    call; a GPT with QK-norm decodes with its cache as its full forward computes."""
    torch.manual_seed(0)
    attention = MultiHeadAttention(BlockConfig(d_model=16, num_heads=4, qk_norm=True)).eval()
    h, memory = torch.randn(2, 3, 16), torch.randn(2, 7, 16)
    with torch.no_grad():
        whole, _ = attention(h, memory, memory)
        cached, _ = attention(h, None, None, kv=attention.project_kv(memory))
    torch.testing.assert_close(cached, whole)

    gpt = GPT(GPTConfig(vocab_size=40, max_seq_length=32, d_model=32, num_layers=2, num_heads=4, d_ff=64,
                        dropout=0.0, attention_dropout=0.0, **FAST_BLOCK)).eval()  # fmt: skip
    with torch.no_grad():
        for p in gpt.parameters():  # zero-initialized projections would hide the attention: give them weights
            p.add_(torch.randn_like(p) * 0.05)
        ids = torch.randint(0, 40, (1, 6))
        generated = gpt.generate(ids, max_new_tokens=8, do_sample=False)
        for length in range(6, generated.size(1)):
            assert gpt(generated[:, :length])[0, -1].argmax() == generated[0, length]


def test_zero_init_projections_start_every_block_as_the_identity():
    torch.manual_seed(0)
    models = [
        GPT(GPTConfig(vocab_size=40, max_seq_length=16, d_model=32, num_layers=2, num_heads=4, d_ff=64,
                      zero_init_projections=True)),
        Transformer(TransformerConfig(src_vocab_size=40, tgt_vocab_size=40, d_model=32, num_layers=2, num_heads=4,
                                      d_ff=64, norm_first=True, zero_init_projections=True)),
        Bert(BertConfig(vocab_size=40, max_seq_length=16, d_model=32, num_layers=2, num_heads=4, d_ff=64,
                        zero_init_projections=True)),
    ]  # fmt: skip
    for model in models:
        zero = {n for n, p in model.named_parameters() if not p.any()}
        for name, p in model.named_parameters():
            writes_residual = name.endswith(("out_proj.weight", "fc2.weight"))
            if writes_residual:
                assert name in zero, name
            elif p.dim() == 2:
                assert name not in zero, name
    gpt = models[0].eval()
    ids = torch.randint(0, 40, (2, 9))
    with torch.no_grad():
        embedded = gpt.positions(gpt.embedding(ids))
        torch.testing.assert_close(gpt(ids), gpt.lm_head(gpt.final_norm(embedded)))
    without = GPT(GPTConfig(vocab_size=40, max_seq_length=16, d_model=32, num_layers=2, num_heads=4, d_ff=64))
    assert without.layers[0].ffn.fc2.weight.any()


def test_muon_trains_the_blocks_matrices_and_adamw_the_rest():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, max_seq_length=16, d_model=32, num_layers=2, num_heads=4, d_ff=64))
    optimizer = make_optimizer(model, TrainConfig(optimizer="muon", lr=0.02, weight_decay=0.0, muon_lr=0.04))
    assert isinstance(optimizer, OptimizerGroup)
    muon, adamw = optimizer.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = {names[id(p)] for group in muon.param_groups for p in group["params"]}
    assert in_muon == {names[i] for i in block_matrices(model)}
    assert in_muon == {f"layers.{i}.{m}.weight" for i in range(2)
                       for m in ("self_attn.qkv_proj", "self_attn.out_proj", "ffn.fc1", "ffn.fc2")}  # fmt: skip
    assert [g["lr_scale"] for g in muon.param_groups] == [2.0]  # muon_lr / lr
    assert len(optimizer.param_groups) == len(muon.param_groups) + len(adamw.param_groups)

    # one step from rest: W_O's update is the orthogonalized gradient, its RMS ≈ 0.2 · lr (Moonshot's matching of
    # AdamW's update size), its singular values far more equal than the gradient's
    for group in optimizer.param_groups:
        group["lr"] = 0.02 * group["lr_scale"]
    weight = model.layers[0].self_attn.out_proj.weight
    before = weight.detach().clone()
    loss = F.cross_entropy(model(torch.randint(0, 40, (4, 12))).flatten(0, 1), torch.randint(0, 40, (48,)))
    loss.backward()
    gradient = weight.grad.clone()
    optimizer.step()
    update = (weight.detach() - before) / 0.04
    assert 0.12 < update.pow(2).mean().sqrt() < 0.28

    def spread(matrix):
        singular = torch.linalg.svdvals(matrix)
        return float(singular.std() / singular.mean())

    assert spread(update) < 0.3 * spread(gradient)
    assert torch.cosine_similarity(update.flatten(), -gradient.flatten(), dim=0) > 0.5  # still downhill
    with pytest.raises(ValueError, match="use ddp with muon"):
        TrainConfig(optimizer="muon", parallel="fsdp")


def test_warmdown_schedule_against_its_formula():
    # warm-up 10 steps, constant, then the last 40% of 100 steps down to min_ratio
    assert lr_multiplier(5, "warmdown", 10, 100, 0.0, 0.4) == pytest.approx(0.5)
    assert lr_multiplier(60, "warmdown", 10, 100, 0.0, 0.4) == 1.0
    assert lr_multiplier(80, "warmdown", 10, 100, 0.0, 0.4) == pytest.approx(0.5)
    assert lr_multiplier(100, "warmdown", 10, 100, 0.1, 0.4) == pytest.approx(0.1)
    # under a time limit the minutes spent count when they are further along than the steps
    assert lr_multiplier(20, "warmdown", 10, 100, 0.0, 0.4, elapsed=0.9) == pytest.approx(0.25)
    assert lr_multiplier(20, "cosine", 10, 110, 0.0, elapsed=0.5) == pytest.approx(0.5)
    assert lr_multiplier(20, "noam", 10, 110, elapsed=0.9) == lr_multiplier(20, "noam", 10, 110)


def lm_task(seed=0, **fields):
    torch.manual_seed(seed)
    tokenizer = Tokenizer.train([TEXT], kind="char")
    config = GPTConfig(vocab_size=tokenizer.vocab_size, max_seq_length=16, d_model=32, num_layers=2, num_heads=4,
                       d_ff=64, dropout=0.0, attention_dropout=0.0, **fields)  # fmt: skip
    ids = torch.tensor(tokenizer.encode(TEXT))
    return LanguageModelingTask(GPT(config), tokenizer, ids[:2000], ids[2000:], batch_size=4, eval_batches=2)


def fast_config(**overrides):
    defaults = dict(max_steps=10, schedule_steps=10, warmup_steps=2, eval_every=5, progress=False)
    return lm_train_config("fast", **{**defaults, **overrides})


@pytest.mark.cpu_class
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])  # fp16: the gradient scaler steps both optimizers
def test_the_fast_recipe_resumes_exactly(tmp_path, precision):
    """Muon's momentum, AdamW's moments and the warm-down's position come back from the checkpoint: a run stopped
    half-way and resumed ends with the uninterrupted run's weights, bit for bit, in each precision."""
    straight = lm_task(**FAST_BLOCK)
    Trainer(straight, fast_config(precision=precision), tmp_path / "straight").fit()
    first = lm_task(**FAST_BLOCK)
    Trainer(first, fast_config(precision=precision, max_steps=5), tmp_path / "split").fit()
    state = json.loads((tmp_path / "split" / "last" / "trainer_state.json").read_text())
    assert any("ns_steps" in group for group in state["param_groups"]) and state["elapsed_seconds"] > 0
    second = lm_task(seed=1, **FAST_BLOCK)
    Trainer(second, fast_config(precision=precision), tmp_path / "split").fit(resume=True)
    for (name, a), b in zip(straight.model.state_dict().items(), second.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_a_time_limited_warmdown_ends_annealed(tmp_path):
    task = lm_task(**FAST_BLOCK)
    config = fast_config(max_steps=100_000, schedule_steps=None, max_minutes=0.02, eval_every=100_000, log_every=1,
                         warmup_steps=1)  # fmt: skip
    Trainer(task, config, tmp_path).fit()
    lrs = [r["lr"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if "lr" in r]
    assert len(lrs) > 10 and lrs[-1] < 0.15 * max(lrs)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:], strict=False))  # never up again after the warm-up


def test_recipes_name_their_fields_and_refuse_mixing():
    fast = recipes.recipe("fast", "translate")
    assert fast.model == {"qk_norm": True, "activation": "relu2", "zero_init_projections": True}
    assert fast.train["optimizer"] == "muon" and fast.train["schedule"] == "warmdown"
    assert recipes.recipe("paper", "lm") == recipes.Change()
    assert recipes.recipe("paper", "lm", changes=("relu2",)).model == {"activation": "relu2"}
    paper = translation_train_config()
    assert (paper.optimizer, paper.schedule, paper.lr) == ("adam", "noam", 1.5e-3)
    assert translation_train_config("fast", lr=1e-4).lr == 1e-4  # what is given wins over the recipe
    assert translation_train_config("fast").lr == recipes.FAST_LR["translate"]
    with pytest.raises(ValueError, match="unknown recipe 'quick'"):
        recipes.recipe("quick", "lm")
    with pytest.raises(ValueError, match="resume it with --recipe fast"):
        recipes.check_resumed("fast", "paper")


def test_layouts_without_the_fast_blocks_refuse_them(tmp_path):
    """Hugging Face's GPT-2 and Llama layouts have no QK-norm and no ReLU²: saving such a model there is refused with
    the reason, before anything is written; glassformer's own format round-trips it."""
    shape = dict(vocab_size=40, max_seq_length=16, d_model=32, num_layers=1, num_heads=4, d_ff=64)
    with pytest.raises(ValueError, match="has no QK-norm"):
        GPT(GPTConfig(**shape, qk_norm=True)).save_pretrained(tmp_path / "a", format="hf")
    with pytest.raises(ValueError, match="GPT-2 has no 'relu2' activation"):
        GPT(GPTConfig(**shape, activation="relu2")).save_pretrained(tmp_path / "b", format="hf")
    with pytest.raises(ValueError, match="Llama has no QK-norm"):
        GPT(GPTConfig.llama(**shape, qk_norm=True)).save_pretrained(tmp_path / "c", format="hf")
    assert not any(tmp_path.iterdir())
    model = GPT(GPTConfig(**shape, **FAST_BLOCK)).eval()
    model.save_pretrained(tmp_path / "ours")
    again = GPT.from_pretrained(tmp_path / "ours")
    ids = torch.randint(0, 40, (1, 8))
    with torch.no_grad():
        assert again.config.qk_norm and torch.equal(again(ids), model(ids))
