"""Property-based tests (hypothesis) over the public API and the command line: any input either works or raises
glassformer's own one-line error — raised by glassformer's code, never an exception escaping from inside torch,
tokenizers or safetensors — and no command ends with a traceback."""

import dataclasses
import math
import traceback
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from glassformer import GPT, GPTConfig, Tokenizer, TransformerConfig
from glassformer.cli.main import main
from glassformer.generation.config import GenerationConfig
from glassformer.masks import causal_mask, padding_mask
from glassformer.models.bert import BertConfig
from glassformer.training.loop import TrainConfig

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
GLASSFORMER = str(Path(__import__("glassformer").__file__).parent)

# values a clumsy or hostile caller passes: negative, zero, huge, non-finite, of the wrong type
ANY_VALUE = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, 2, -1, 0.5, 1.0, 1e-9, "0.1", "relu", "", None, True, False, [1], {"a": 1}]),
)


REFUSED = object()


def own_error(call, *args, **kwargs):
    """Run ``call``; if it raises, the exception must be raised by glassformer's code, as one line."""
    try:
        return call(*args, **kwargs)
    except (ValueError, FileNotFoundError, FloatingPointError) as error:
        where = traceback.extract_tb(error.__traceback__)[-1].filename
        assert where.startswith(GLASSFORMER), f"{type(error).__name__} escaped from {where}: {error}"
        assert "\n" not in str(error) and str(error)
        return REFUSED


def config_fields(cls):
    names = [f.name for f in dataclasses.fields(cls)]
    return st.dictionaries(st.sampled_from(names), ANY_VALUE, max_size=4)


@pytest.mark.parametrize("cls", [GPTConfig, TransformerConfig, BertConfig, TrainConfig, GenerationConfig])
@SETTINGS
@given(data=st.data())
def test_any_config_is_built_or_refused_by_glassformer(cls, data):
    fields = data.draw(config_fields(cls))
    config = own_error(cls, **fields)
    if isinstance(config, GenerationConfig) and own_error(config.validate, 100) is REFUSED:
        config = REFUSED
    for name, value in fields.items():  # what was accepted is in range: no NaN, no negative size slipped through
        if config is not REFUSED and isinstance(value, float) and not math.isfinite(value):
            raise AssertionError(f"{cls.__name__} accepted {name}={value}")


@pytest.fixture(scope="module")
def tiny():
    tokenizer = Tokenizer.train(["the quick brown fox jumps over the lazy dog"], kind="char")
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size, max_seq_length=16, d_model=16, num_layers=1, num_heads=2, d_ff=32,
        eos_token_id=0,
    )  # fmt: skip
    return GPT(config).eval(), tokenizer


ID_TENSORS = st.one_of(
    st.lists(st.lists(st.integers(-5, 60), min_size=0, max_size=20), min_size=0, max_size=3).map(
        lambda rows: torch.tensor(rows) if rows and len({len(r) for r in rows}) == 1 else torch.tensor([])
    ),
    st.just(torch.ones(2, 3)),  # floats
    st.just(torch.ones(3, dtype=torch.long)),  # no batch dimension
    st.just(torch.ones(1, 2, 3, dtype=torch.long)),
    st.just(torch.zeros(0, 4, dtype=torch.long)),  # an empty batch
)


@SETTINGS
@given(ids=ID_TENSORS)
def test_any_input_ids_are_run_or_refused(tiny, ids):
    model, _ = tiny
    with torch.no_grad():
        logits = own_error(model, ids)
    if logits is not REFUSED:
        assert torch.isfinite(logits).all()


GENERATION_OPTIONS = st.dictionaries(
    st.sampled_from(
        ["max_new_tokens", "max_length", "min_new_tokens", "do_sample", "temperature", "top_k", "top_p",
         "no_repeat_ngram_size", "repetition_penalty", "num_beams", "length_penalty", "eos_token_id", "seed"]
    ),
    st.one_of(st.integers(-3, 40), st.floats(-2, 3), st.just(math.nan), st.booleans(), st.none()),
    max_size=5,
)  # fmt: skip


@SETTINGS
@given(options=GENERATION_OPTIONS, prompt=st.lists(st.integers(-2, 40), min_size=0, max_size=18))
def test_any_generation_request_works_or_is_refused(tiny, options, prompt):
    model, _ = tiny
    ids = torch.tensor([prompt], dtype=torch.long) if prompt else torch.zeros(1, 0, dtype=torch.long)
    with torch.no_grad():
        out = own_error(model.generate, ids, **options)
    if out is not REFUSED:
        assert out.shape[0] == 1 and out.shape[1] > len(prompt) and int(out.min()) >= 0


TEXTS = st.one_of(
    st.text(max_size=40),
    st.text(max_size=10).map(lambda t: t + "\udcff"),  # what undecodable bytes become (surrogateescape)
    st.sampled_from([None, 3, b"bytes", ["a", 4]]),
)


@SETTINGS
@given(text=TEXTS, ids=st.lists(st.one_of(st.integers(-3, 60), st.floats(), st.none()), max_size=8))
def test_any_text_and_ids_are_encoded_decoded_or_refused(tiny, text, ids):
    _, tokenizer = tiny
    encoded = own_error(tokenizer.encode, text)
    if encoded is not REFUSED and isinstance(text, str):
        assert all(0 <= i < tokenizer.vocab_size for i in encoded)
    own_error(tokenizer.decode, ids)
    own_error(tokenizer.encode_chat, [{"role": "user", "content": text}])


@SETTINGS
@given(size=st.integers(-3, 40), pad=st.integers(-3, 5))
def test_masks_take_any_size(size, pad):
    mask = own_error(causal_mask, size)
    if mask is not REFUSED:
        assert mask.shape == (size, size)
    own_error(padding_mask, torch.arange(max(size, 0)).view(1, -1) % 5, pad)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny):
    model, tokenizer = tiny
    directory = tmp_path_factory.mktemp("model")
    model.save_pretrained(directory)
    tokenizer.save(directory)
    return directory


NUMBERS = st.one_of(
    st.integers(-10, 10**6).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str), st.just("x")
)


@SETTINGS
@given(
    command=st.sampled_from(["generate", "figures"]),
    values=st.lists(NUMBERS, min_size=4, max_size=4),
    flags=st.lists(st.booleans(), min_size=4, max_size=4),
)
def test_any_command_line_ends_in_output_or_one_line(model_dir, tmp_path_factory, capsys, command, values, flags):
    if command == "generate":
        names = ["--max-new-tokens", "--top-p", "--temperature", "--top-k"]
        argv = ["generate", "--model", str(model_dir), "--prompt", "the", "--sample", "--device", "cpu"]
    else:
        names = ["--positions", "--d-model", "--layer", "--head"]
        argv = ["figures", "positional-encoding", "-o", str(tmp_path_factory.mktemp("fig") / "pe.png")]
    argv += [part for name, value, use in zip(names, values, flags, strict=True) if use for part in (name, value)]
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse: a value of the wrong type, usage and one line
        code = exit.code
    err = capsys.readouterr().err
    assert code in (0, 2), err
    assert "Traceback" not in err
    if code == 2:
        assert err.strip().splitlines()[-1].startswith(("glassformer: error:", "usage:", "glassformer ")), err


TRAIN_FLAGS = {
    "--lr": st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(str), st.just("1e-3")),
    "--warmup-steps": st.integers(-3, 3).map(str),
    "--batch-size": st.integers(-1, 4).map(str),
    "--dropout": st.floats(-0.5, 1.5).map(str),
    "--block-size": st.integers(-1, 40).map(str),
    "--grad-accum": st.integers(-1, 2).map(str),
    "--kv-heads": st.integers(-1, 3).map(str),
    "--max-minutes": st.floats(allow_nan=True, allow_infinity=True).map(str),
}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flags=st.dictionaries(st.sampled_from(sorted(TRAIN_FLAGS)), st.just(None), max_size=4), data=st.data())
def test_any_training_flags_train_or_end_in_one_line(tmp_path_factory, capsys, flags, data):
    corpus = tmp_path_factory.mktemp("corpus") / "text.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 60)
    argv = ["train", "lm", "--data", str(corpus), "--out", str(tmp_path_factory.mktemp("run") / "r"), "--quiet",
            "--preset", "tiny", "--d-model", "16", "--num-heads", "2", "--num-layers", "1", "--d-ff", "32",
            "--max-steps", "1", "--eval-every", "1", "--device", "cpu"]  # fmt: skip
    for name in flags:
        argv += [name, data.draw(TRAIN_FLAGS[name])]
    try:
        code = main(argv)
    except SystemExit as exit:
        code = exit.code
    err = capsys.readouterr().err
    assert code in (0, 2) and "Traceback" not in err, err
