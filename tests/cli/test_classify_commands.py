"""`train classify`, `classify`, `evaluate`, `embed` and `similarity`, end to end on a tiny labelled file and
a tiny BERT that the test writes."""

import json

import pytest
import torch
from run_glassformer import cli


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_classification):
    tsv, init = tiny_classification
    out = tmp_path_factory.mktemp("classify-cli") / "run"
    result = cli(
        "train", "classify", "--data", str(tsv), "--init", str(init), "--out", str(out), "--epochs", "8",
        "--patience", "10", "--batch-size", "16", "--max-length", "32", "--lr", "3e-3", "--precision", "fp32",
        "--quiet",
    )  # fmt: skip
    summary = json.loads(result.stdout.splitlines()[0])
    assert summary["best_valid_accuracy"] >= 0.9
    return out


def test_train_writes_a_run(run_dir):
    for name in ("classification.json", "metrics.jsonl", "best/config.json", "best/tokenizer.json", "last"):
        assert (run_dir / name).exists(), name
    assert json.loads((run_dir / "classification.json").read_text())["labels"] == ["negative", "positive"]


def test_classify_arguments_stdin_and_json(run_dir):
    out = cli("classify", "--model", str(run_dir), "the film was superb", "the plot was awful").stdout.splitlines()
    assert [line.split("\t")[0] for line in out] == ["positive", "negative"]
    assert 0.5 < float(out[0].split("\t")[1]) <= 1.0
    lines = cli("classify", "--model", str(run_dir), "--json", stdin="a lovely story\n\na dull story\n").stdout
    records = [json.loads(line) for line in lines.splitlines()]
    assert [r["label"] for r in records] == ["positive", "negative"]
    assert sum(records[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)


def test_classify_refuses_empty_and_over_long_text(run_dir):
    result = cli("classify", "--model", str(run_dir), "good", " ", check=False)
    assert result.returncode == 2 and "empty" in result.stderr
    long_text = " ".join(["good"] * 40)
    result = cli("classify", "--model", str(run_dir), "--no-truncation", long_text, check=False)
    assert result.returncode == 2 and "truncation" in result.stderr
    assert cli("classify", "--model", str(run_dir), long_text).stdout.startswith("positive")


def test_evaluate_reports_the_model_next_to_both_baselines(run_dir):
    out = cli("evaluate", "--model", str(run_dir)).stdout
    assert "fine-tuned model" in out and "VADER rules" in out and "TF-IDF + logistic regression" in out
    record = json.loads((run_dir / "evaluation.jsonl").read_text().splitlines()[-1])
    assert record["split"] == "test" and record["texts"] == 24
    assert record["model"]["accuracy"] >= 0.9
    assert (run_dir / "test.predictions.tsv").is_file()


def test_embed_and_similarity(tiny_classification):
    model = str(tiny_classification[1])
    out = cli("embed", "--model", model, "--json", "good film", "bad film").stdout.splitlines()
    vectors = [json.loads(line)["embedding"] for line in out]
    assert len(vectors) == 2 and len(vectors[0]) == 32
    assert sum(x * x for x in vectors[0]) == pytest.approx(1.0, abs=1e-4)
    table = json.loads(cli("similarity", "--model", model, "--json", "good film", "bad film", "good film").stdout)
    assert table["cosine"][0][2] == pytest.approx(1.0, abs=1e-4)
    result = cli("similarity", "--model", model, "only one", check=False)
    assert result.returncode == 2 and "at least two" in result.stderr


def test_layer_decay_and_seed_reach_the_optimizer(tiny_classification, tmp_path):
    """--layer-decay scales each layer's learning rate (head 1, top layer 1, each lower layer by the factor, the
    embeddings below the lowest), kept on --resume; --seed changes the batches."""
    tsv, init = tiny_classification
    common = ("--data", str(tsv), "--init", str(init), "--batch-size", "16", "--max-length", "16", "--quiet")

    def train(out, *flags):
        cli("train", "classify", *common, "--out", str(out), "--epochs", "0.25", *flags)
        return json.loads((out / "last" / "trainer_state.json").read_text())

    decayed = train(tmp_path / "decayed", "--layer-decay", "0.5")
    scales = sorted({group["lr_scale"] for group in decayed["param_groups"]})
    assert scales == [0.25, 0.5, 1.0]  # 2 layers: embeddings 0.5², layer 0 0.5, layer 1 and the head 1
    plain = train(tmp_path / "plain")
    assert {group["lr_scale"] for group in plain["param_groups"]} == {1.0}
    cli("train", "classify", "--out", str(tmp_path / "decayed"), "--resume", "--epochs", "0.5", "--quiet")
    resumed = json.loads((tmp_path / "decayed" / "last" / "trainer_state.json").read_text())
    assert sorted({group["lr_scale"] for group in resumed["param_groups"]}) == [0.25, 0.5, 1.0]
    from safetensors.torch import load_file

    train(tmp_path / "seeded", "--seed", "7")
    train(tmp_path / "plain-again")
    weights = {name: load_file(tmp_path / name / "last" / "model.safetensors") for name in ("plain", "plain-again",
                                                                                           "seeded")}  # fmt: skip
    assert all(torch.equal(weights["plain"][k], weights["plain-again"][k]) for k in weights["plain"])
    assert not torch.equal(weights["plain"]["classifier.weight"], weights["seeded"]["classifier.weight"])
