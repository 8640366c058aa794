import json

import pytest
import torch
from safetensors.torch import load_file

from glassformer import Transformer, TransformerConfig
from glassformer.data.synthetic import symbol_sequences
from glassformer.generation.seq2seq import translate_ids
from glassformer.training import trainer_state
from glassformer.training.loop import TrainConfig, Trainer
from glassformer.training.translation import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    DataSpec,
    TranslationTask,
    train_translation,
)


def test_reverse_task_is_learned_to_99_percent_exact_match(tmp_path):
    """The end-to-end check of masks, teacher forcing, loss and decoding: reverse 3-7 random symbols."""
    torch.manual_seed(0)
    symbols = dict(num_symbols=10, min_length=3, max_length=7, first_id=3, bos_token_id=BOS_ID, eos_token_id=EOS_ID)
    train = symbol_sequences("reverse", 4000, seed=0, **symbols)
    test = symbol_sequences("reverse", 200, seed=1, **symbols)
    config = TransformerConfig(
        src_vocab_size=13, tgt_vocab_size=13, d_model=64, num_layers=2, num_heads=4, d_ff=128, max_seq_length=16,
        dropout=0.0, pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID, norm_first=True,
        share_embeddings=True, tie_output=True,
    )  # fmt: skip
    model = Transformer(config)
    task = TranslationTask(model, (None, None), train, test, max_tokens=512, label_smoothing=0.0)
    train_config = TrainConfig(
        max_steps=400, lr=3e-3, schedule="cosine", warmup_steps=50, betas=(0.9, 0.98), weight_decay=0.0,
        eval_every=400, log_every=100, progress=False, precision="fp32",
    )  # fmt: skip
    Trainer(task, train_config, tmp_path / "run").fit()
    src = torch.nn.utils.rnn.pad_sequence([torch.tensor(s) for s, _ in test.examples], batch_first=True)
    outputs = translate_ids(model, src, num_beams=1)
    exact = sum(out == t[1:-1] for out, (_, t) in zip(outputs, test.examples, strict=True)) / len(test)
    assert exact >= 0.99


def train_toy(out, steps, tsv, resume=False, schedule_steps=None):
    config = TrainConfig(
        max_steps=steps, schedule_steps=schedule_steps, lr=2e-3, schedule="noam", warmup_steps=5, eval_every=3,
        log_every=2, progress=False, seed=0, precision="fp32",
    )  # fmt: skip
    return train_translation(
        out, DataSpec(str(tsv)), "tiny", vocab_size=300, max_tokens=256, train=config, resume=resume
    )


def test_resume_continues_exactly(tmp_path, write_toy_corpus):
    tsv = write_toy_corpus(tmp_path / "toy.tsv")
    train_toy(tmp_path / "straight", 8, tsv)
    train_toy(tmp_path / "halves", 4, tsv, schedule_steps=8)
    train_toy(tmp_path / "halves", 8, tsv, resume=True)
    straight = load_file(tmp_path / "straight" / "last" / "model.safetensors")
    halves = load_file(tmp_path / "halves" / "last" / "model.safetensors")
    assert straight.keys() == halves.keys()
    for name in straight:
        assert torch.equal(straight[name], halves[name]), name

    def losses(run, key):
        lines = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r[key] for r in lines if key in r}

    assert losses("straight", "loss") == losses("halves", "loss")
    halves_valid = losses("halves", "valid_loss")  # the interrupted run also validated when it stopped at step 4
    assert losses("straight", "valid_loss") == {step: halves_valid[step] for step in (3, 6, 8)}
    state = json.loads((tmp_path / "halves" / "last" / "trainer_state.json").read_text())
    assert state["step"] == 8 and set(state["task"]) == {"epoch", "position", "seed"}


def test_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch, write_toy_corpus):
    tsv = write_toy_corpus(tmp_path / "toy.tsv")
    train_toy(tmp_path / "run", 3, tsv)
    before = load_file(tmp_path / "run" / "last" / "model.safetensors")

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(trainer_state, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        train_toy(tmp_path / "run", 6, tsv, resume=True)
    model = Transformer.from_pretrained(tmp_path / "run" / "last")  # still loadable, still the old weights
    for name, tensor in before.items():
        assert torch.equal(model.state_dict()[name], tensor)


def test_run_directory_checks(tmp_path, write_toy_corpus):
    tsv = write_toy_corpus(tmp_path / "toy.tsv")
    other = tmp_path / "gpt-run"
    (other / "last").mkdir(parents=True)
    (other / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(ValueError, match="files glassformer did not write"):
        train_toy(other, 2, tsv)
    assert (other / "metrics.jsonl").read_text() == "{}\n"
    train_toy(tmp_path / "run", 2, tsv)
    with pytest.raises(ValueError, match="already holds a translation run"):
        train_toy(tmp_path / "run", 2, tsv)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train_toy(tmp_path / "nothing", 2, tsv, resume=True)


def test_unknown_corpus_name():
    with pytest.raises(ValueError, match="unknown corpus 'wikipedia'"):
        DataSpec("wikipedia").load()


def test_separate_vocabularies_are_saved_and_used(tmp_path, write_toy_corpus):
    from glassformer.pipelines.translator import SOURCE_TOKENIZER_FILE, Translator

    tsv = write_toy_corpus(tmp_path / "toy.tsv")
    config = TrainConfig(max_steps=3, eval_every=3, progress=False)
    train_translation(tmp_path / "run", DataSpec(str(tsv)), "tiny", vocab_size=280, shared_vocab=False, train=config)
    best = tmp_path / "run" / "best"
    assert (best / SOURCE_TOKENIZER_FILE).is_file() and (best / "tokenizer.json").is_file()
    translator = Translator.load(tmp_path / "run")
    model_config = translator.model.config
    assert not model_config.share_embeddings
    assert model_config.src_vocab_size == translator.source_tokenizer.vocab_size
    assert model_config.tgt_vocab_size == translator.target_tokenizer.vocab_size
    assert translator.source_tokenizer is not translator.target_tokenizer
    german = "Guten Morgen"
    assert translator.source_tokenizer.encode(german) != translator.target_tokenizer.encode(german)
    assert all(isinstance(t, str) for t in translator.translate([german, "Danke schön"], num_beams=2))


def fake_rates(monkeypatch, steps_in_budget: dict[str, float]):
    """Make ``Trainer.measure_steps`` report, per preset (known by its model's shape), a rate that gives
    ``steps_in_budget[preset]`` steps in the run's time; records which presets were timed."""
    from glassformer.training import translation

    timed = []
    shapes = {(p["d_model"], p["num_layers"], p["d_ff"]): name for name, p in translation.PRESETS.items()}

    def measure(self, steps=2):
        c = self.task.model.config
        preset = shapes[(c.d_model, c.num_layers, c.d_ff)]
        timed.append(preset)
        seconds = 60 * self.config.max_minutes / steps_in_budget[preset]
        return seconds, self.task.mean_batch_tokens() / seconds

    monkeypatch.setattr(Trainer, "measure_steps", measure)
    return timed


@pytest.mark.parametrize(
    "steps, chosen, timed",
    [
        ({"compact": 780, "small": 215}, "compact", ["compact", "small"]),  # AVX2-only CPU, float32
        ({"compact": 2000, "small": 690, "medium": 280}, "small", ["compact", "small", "medium"]),  # AVX512-BF16
        ({"compact": 9e4, "small": 5e4, "medium": 2e4, "base": 8e3}, "base", ["compact", "small", "medium", "base"]),
        ({"compact": 100, "small": 20}, "compact", ["compact"]),  # nothing fits: the cheapest, timed alone
    ],
)
def test_auto_preset_trains_the_largest_shape_that_fits_the_time(
    tmp_path, write_toy_corpus, monkeypatch, steps, chosen, timed
):
    from glassformer.training.translation import AUTO_SHAPES

    seen = fake_rates(monkeypatch, steps)
    tsv = write_toy_corpus(tmp_path / "toy.tsv")
    reports = []
    config = TrainConfig(max_steps=1, max_minutes=10, eval_every=1, progress=False)
    summary = train_translation(
        tmp_path / "run", DataSpec(str(tsv)), "auto", vocab_size=300, train=config, report=reports.append
    )
    record = json.loads((tmp_path / "run" / "translation.json").read_text())
    max_tokens = dict(AUTO_SHAPES)[chosen]
    assert seen == timed and summary["preset"] == record["preset"] == chosen
    assert record["max_tokens"] == summary["max_tokens"] == max_tokens
    assert reports == [record["auto_preset"]] and f"-> {chosen} with {max_tokens}-token batches" in reports[0]
    assert "device cpu" in reports[0] or "device cuda" in reports[0]


def test_auto_preset_without_a_time_limit_is_small(tmp_path, write_toy_corpus, monkeypatch):
    seen = fake_rates(monkeypatch, {})
    tsv = write_toy_corpus(tmp_path / "toy.tsv")
    config = TrainConfig(max_steps=1, eval_every=1, progress=False)
    summary = train_translation(tmp_path / "run", DataSpec(str(tsv)), "auto", vocab_size=300, train=config)
    assert summary["preset"] == "small" and summary["max_tokens"] == 4096 and seen == []


@pytest.mark.cpu_class
def test_auto_preset_times_real_steps(tmp_path, write_toy_corpus):
    """Unfaked: the shapes are timed for real on this machine, in the precision auto means on its CPU class (the
    demo's choice, so GLASSFORMER_CPU narrows it too), and one of them is trained."""
    from glassformer import runtime
    from glassformer.training.translation import AUTO_SHAPES

    tsv = write_toy_corpus(tmp_path / "toy.tsv")
    config = TrainConfig(max_steps=1, max_minutes=0.05, eval_every=1, progress=False)  # precision auto, as the demo
    summary = train_translation(tmp_path / "run", DataSpec(str(tsv)), "auto", vocab_size=300, train=config)
    assert (summary["preset"], summary["max_tokens"]) in AUTO_SHAPES
    report = json.loads((tmp_path / "run" / "translation.json").read_text())["auto_preset"]
    assert "measured compact with 2048-token batches" in report
    assert f"precision {runtime.place('cpu', 'auto').precision} (auto" in report


def test_the_fast_recipe_is_what_auto_times_and_what_trains(tmp_path, write_toy_corpus, monkeypatch):
    """``--preset auto --recipe fast``: every timed candidate is the fast recipe's model under its optimizer (Muon's
    extra work counted), and the run trains and records that recipe."""
    from glassformer.training.optimizers import OptimizerGroup
    from glassformer.training.translation import translation_train_config

    timed = []

    def measure(self, steps=2):
        timed.append((self.task.model.config.qk_norm, self.task.model.config.activation, type(self.optimizer)))
        seconds = 60 * self.config.max_minutes / 100  # 100 steps in the time: the cheapest shape, timed alone
        return seconds, self.task.mean_batch_tokens() / seconds

    monkeypatch.setattr(Trainer, "measure_steps", measure)
    tsv = write_toy_corpus(tmp_path / "toy.tsv")
    config = translation_train_config("fast", max_steps=2, max_minutes=10, eval_every=1, progress=False)
    train_translation(tmp_path / "run", DataSpec(str(tsv)), "auto", vocab_size=300, train=config, recipe="fast")
    assert timed and set(timed) == {(True, "relu2", OptimizerGroup)}
    model = json.loads((tmp_path / "run" / "last" / "config.json").read_text())
    assert model["qk_norm"] and model["zero_init_projections"] and model["activation"] == "relu2"
    assert json.loads((tmp_path / "run" / "translation.json").read_text())["recipe"] == "fast"
    with pytest.raises(ValueError, match="resume it with --recipe fast"):
        train_translation(tmp_path / "run", DataSpec(str(tsv)), "small", vocab_size=300, train=config, resume=True)
