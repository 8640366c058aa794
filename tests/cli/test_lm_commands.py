"""`train lm` and `generate`, end to end on a tiny text file the test writes."""

import json

import pytest
from run_glassformer import cli

SPEECH = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm")
    (folder / "text.txt").write_text(SPEECH * 60)
    out = folder / "run"
    result = cli(
        "train",
        "lm",
        "--data",
        str(folder / "text.txt"),
        "--out",
        str(out),
        "--preset",
        "tiny",
        "--block-size",
        "32",
        "--max-steps",
        "30",
        "--eval-every",
        "15",
        "--quiet",
    )
    summary = json.loads(result.stdout.splitlines()[0])
    assert summary["step"] == 30 and summary["valid_ppl"] > 1
    return out


def test_train_lm_writes_a_run(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("valid_ppl" in r for r in records) and any("tokens_per_s" in r for r in records)
    assert (run_dir / "best" / "tokenizer.json").is_file() and (run_dir / "last" / "model.safetensors").is_file()


def test_train_lm_resume(run_dir):
    result = cli(
        "train",
        "lm",
        "--data",
        str(run_dir.parent / "text.txt"),
        "--out",
        str(run_dir),
        "--preset",
        "tiny",
        "--block-size",
        "32",
        "--max-steps",
        "40",
        "--eval-every",
        "15",
        "--quiet",
        "--resume",
    )
    assert json.loads(result.stdout.splitlines()[0])["step"] == 40


@pytest.mark.parametrize(
    "flags",
    [
        [],
        [
            "--sample",
            "--top-k",
            "50",
            "--top-p",
            "0.95",
            "--temperature",
            "0.7",
            "--no-repeat-ngram-size",
            "2",
            "--seed",
            "1",
        ],
        ["--num-beams", "3"],
        ["--quantize", "int8"],
        ["--quantize", "int4", "--group-size", "64", "--quantize-embeddings", "int8"],
        ["--quantize", "int4", "--quantize-activations", "bf16", "--num-beams", "4"],  # 4 rows: bfloat16 products
    ],
)
def test_generate(run_dir, flags):
    result = cli("generate", "--model", str(run_dir), "--prompt", "First", "--max-new-tokens", "20", *flags)
    assert result.stdout.startswith("First") and len(result.stdout) > len("First\n")


def test_generate_with_seed_is_reproducible(run_dir):
    args = ("generate", "--model", str(run_dir), "--prompt", "All", "--max-length", "30", "--sample", "--seed", "4")
    assert cli(*args).stdout == cli(*args).stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "--prompt", ""], "prompt is empty"),
        (["generate", "--prompt", "x", "--max-new-tokens", "200"], "exceeds the model's context"),
        (["generate", "--prompt", "x", "--quantize", "int4", "--group-size", "48"], "int4 with group size 48"),
        (["generate", "--prompt", "x", "--group-size", "32"], "--quantize-embeddings/-activations go with"),
        (
            ["generate", "--prompt", "x", "--top-p", "2", "--sample", "--max-new-tokens", "3"],
            "--top-p must be a number in (0, 1]",
        ),
    ],
)
def test_generate_errors(run_dir, args, message):
    result = cli(*args[:1], "--model", str(run_dir), *args[1:], check=False)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_train_lm_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    result = cli("train", "lm", "--data", str(tmp_path / "empty.txt"), "--out", str(tmp_path / "r"), check=False)
    assert result.returncode == 2 and "is empty" in result.stderr
    result = cli("train", "lm", "--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "r"), check=False)
    assert result.returncode == 2 and "no text file" in result.stderr


def test_train_lm_with_the_fast_recipe_end_to_end(tmp_path):
    """``--recipe fast``: the model has the fast blocks, the optimizer is Muon + AdamW under the warm-down schedule,
    a flag given beside it wins, and resuming with another recipe is refused with the one to use."""
    (tmp_path / "text.txt").write_text(SPEECH * 60)
    common = ["train", "lm", "--data", str(tmp_path / "text.txt"), "--out", str(tmp_path / "run"), "--preset",
              "tiny", "--block-size", "32", "--eval-every", "10", "--quiet"]  # fmt: skip
    cli(*common, "--recipe", "fast", "--max-steps", "20", "--warmup-steps", "4")
    config = json.loads((tmp_path / "run" / "last" / "config.json").read_text())
    assert config["qk_norm"] and config["zero_init_projections"] and config["activation"] == "relu2"
    state = json.loads((tmp_path / "run" / "last" / "trainer_state.json").read_text())
    assert any("ns_steps" in group for group in state["param_groups"])  # Muon's groups beside AdamW's
    lrs = [r["lr"] for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) if "lr" in r]
    assert lrs[0] == pytest.approx(3e-3)  # step 10: the recipe's peak lr, before the last 40% of the run
    assert lrs[-1] < 3e-3 * 0.2  # warmed down by the end
    refused = cli(*common, "--max-steps", "30", "--resume", check=False)
    assert refused.returncode != 0 and "resume it with --recipe fast" in refused.stderr
