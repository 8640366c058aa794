"""`generate` and `chat` end to end with real pretrained weights (the smollm2 shortcut), and `train lm --arch llama`."""

import json

import pytest
from run_glassformer import cli


def test_generate_with_smollm2_knows_paris():
    result = cli("generate", "--model", "smollm2", "--prompt", "The capital of France is", "--max-new-tokens", "8")
    assert result.stdout.startswith("The capital of France is") and "Paris" in result.stdout


def test_generate_with_the_guide_s_sampling_flags_is_reproducible():
    args = (
        "generate", "--model", "smollm2", "--prompt", "In a world where AI has become commonplace,", "--max-length",
        "30", "--no-repeat-ngram-size", "2", "--top-k", "50", "--top-p", "0.95", "--temperature", "0.7", "--sample",
        "--seed", "3",
    )  # fmt: skip
    first = cli(*args).stdout
    assert first.startswith("In a world where AI has become commonplace,") and len(first) > 60
    assert cli(*args).stdout == first


def test_chat_holds_a_multi_turn_conversation():
    too_long = "word " * 9000  # past SmolLM2's 8192 positions: refused, and the conversation goes on
    lines = f"What is the capital of France?\n{too_long}\n/reset\n\nWhat is the capital of Germany?\nAnd of Italy?\n"
    result = cli("chat", "--model", "smollm2", "--max-new-tokens", "24", stdin=lines)
    replies = [line for line in result.stdout.splitlines() if line.startswith("assistant> ")]
    assert len(replies) == 3, result.stdout
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "more than the model's context allows" in errors[0], result.stderr
    assert "Paris" in replies[0] and "Berlin" in replies[1] and "Rome" in replies[2]


def test_chat_needs_a_chat_template(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("To be, or not to be, that is the question.\n" * 40)
    out = tmp_path / "run"
    summary = cli(
        "train", "lm", "--data", str(text), "--out", str(out), "--preset", "tiny", "--arch", "llama", "--kv-heads",
        "2", "--block-size", "32", "--max-steps", "20", "--eval-every", "10", "--quiet",
    )  # fmt: skip
    assert json.loads(summary.stdout.splitlines()[0])["step"] == 20
    config = json.loads((out / "best" / "config.json").read_text())
    assert (config["positional"], config["norm"], config["num_kv_heads"]) == ("rope", "rmsnorm", 2)
    assert cli("generate", "--model", str(out), "--prompt", "To be", "--max-new-tokens", "5").stdout.startswith("To be")
    result = cli("chat", "--model", str(out), stdin="hello\n", check=False)
    assert result.returncode == 2 and "no chat template" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "--model", "no/such-model", "--prompt", "x"], "local Hugging Face cache"),
        (["train", "lm", "--arch", "llama", "--kv-heads", "3", "--preset", "tiny", "--out", "r"], "num_kv_heads"),
        (["chat", "--model", "smollm2", "--max-new-tokens", "9000"], "leaves no room for a message"),
    ],
)
def test_errors(tmp_path, args, message):
    (tmp_path / "t.txt").write_text("some text " * 50)
    extra = ["--data", str(tmp_path / "t.txt")] if args[0] == "train" else []
    result = cli(*[a if a != "r" else str(tmp_path / "r") for a in args], *extra, check=False)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_chat_drops_the_oldest_turns_when_the_context_fills():
    from glassformer.cli.chat import fit_context

    messages = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "u2"},
    ]
    assert fit_context(messages, list(range(10)), limit=10) and len(messages) == 4
    assert not fit_context(messages, list(range(11)), limit=10)  # too long: the first exchange goes, system stays
    assert [m["content"] for m in messages] == ["s", "u2"]
    with pytest.raises(ValueError, match="more than the model's context allows"):
        fit_context(messages, list(range(11)), limit=10)  # only the new message is left: it alone is too long
