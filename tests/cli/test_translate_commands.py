"""`data`, `train translate`, `translate` and `evaluate`, end to end on a toy parallel file the test writes."""

import json

import pytest
from run_glassformer import cli


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, write_toy_corpus):
    folder = tmp_path_factory.mktemp("translate")
    tsv = write_toy_corpus(folder / "toy.tsv")
    out = folder / "run"
    result = cli(
        "train", "translate", "--data", str(tsv), "--out", str(out), "--preset", "tiny", "--vocab-size", "300",
        "--max-tokens", "512", "--max-steps", "40", "--eval-every", "20", "--log-every", "5", "--lr", "3e-3",
        "--warmup-steps", "10", "--quiet",
    )  # fmt: skip
    summary = json.loads(result.stdout.splitlines()[0])
    assert summary["step"] == 40 and summary["train_pairs"] > 30
    assert "run directory" in result.stdout
    return out


def test_train_writes_a_run(run_dir):
    for name in (
        "translation.json",
        "metrics.jsonl",
        "best/config.json",
        "best/tokenizer.json",
        "last/model.safetensors",
    ):
        assert (run_dir / name).is_file(), name
    config = json.loads((run_dir / "best" / "config.json").read_text())
    assert (config["pad_token_id"], config["bos_token_id"], config["eos_token_id"], config["unk_token_id"]) == (
        0,
        1,
        2,
        3,
    )
    valid = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in valid if "loss" in r]
    assert losses[-1] < losses[0]


def test_translate_arguments_and_stdin(run_dir):
    result = cli("translate", "--model", str(run_dir), "ich habe zwei rote Äpfel", "wir haben drei alte Bücher")
    assert len(result.stdout.splitlines()) == 2
    result = cli("translate", "--model", str(run_dir), "--beam", "1", stdin="du hast vier große Häuser\n\nich habe\n")
    assert len(result.stdout.splitlines()) == 2


def test_evaluate_prints_bleu_and_writes_outputs(run_dir):
    result = cli("evaluate", "--model", str(run_dir), "--beam", "2", "--quiet")
    assert "BLEU" in result.stdout and "chrF" in result.stdout
    record = json.loads((run_dir / "evaluation.jsonl").read_text().splitlines()[-1])
    assert record["split"] == "test" and record["beam"] == 2 and 0 <= record["bleu"] <= 100
    rows = (run_dir / "test.beam2.tsv").read_text().splitlines()
    assert rows[0] == "source\treference\thypothesis" and len(rows) == record["pairs"] + 1


def test_evaluate_quantized_names_it_and_keeps_its_own_outputs(run_dir):
    result = cli("evaluate", "--model", str(run_dir), "--beam", "2", "--quiet", "--quantize", "int8",
                 "--quantize-activations", "int8")  # fmt: skip
    assert "beam 2 (int8)" in result.stdout
    record = json.loads((run_dir / "evaluation.jsonl").read_text().splitlines()[-1])
    assert record["quantization"] == dict(kind="int8", group_size=None, embeddings=None, activations="int8")
    assert (run_dir / "test.beam2.int8.tsv").is_file()


def test_resume_continues_the_run(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    result = cli("train", "translate", "--out", str(copy), "--resume", "--max-steps", "44", "--quiet")
    assert json.loads(result.stdout.splitlines()[0])["step"] == 44


@pytest.mark.parametrize(
    "files, message",
    [
        ({"bad.tsv": "ich habe\tI have\nohne Tabulator\n"}, "line 2 of .*bad.tsv has no tab"),
        ({"bad.tsv": ""}, "bad.tsv is empty"),
        ({"de.txt": "eins\nzwei\ndrei\n", "en.txt": "one\ntwo\n"}, "has 3 lines but .*en.txt has 2"),
    ],
)
def test_train_refuses_bad_data_before_writing(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    data = ",".join(str(tmp_path / name) for name in files)
    out = tmp_path / "run"
    result = cli("train", "translate", "--data", data, "--out", str(out), "--preset", "tiny", check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "glassformer: error:" in result.stderr
    import re

    assert re.search(message, result.stderr), result.stderr
    assert not out.exists()


def test_unknown_corpus_and_foreign_run_directory(tmp_path, run_dir):
    result = cli("train", "translate", "--data", "wikipedia", "--out", str(tmp_path / "r"), check=False)
    assert result.returncode == 2 and "unknown corpus 'wikipedia'" in result.stderr
    result = cli("data", "get", "wikipedia", check=False)
    assert result.returncode == 2 and "unknown corpus 'wikipedia'" in result.stderr
    gpt = tmp_path / "gpt"
    (gpt / "best").mkdir(parents=True)
    (gpt / "best" / "config.json").write_text(json.dumps({"model_type": "gpt"}))
    (gpt / "metrics.jsonl").write_text("{}\n")
    result = cli("translate", "--model", str(gpt), "hallo", check=False)
    assert result.returncode == 2 and "holds a 'gpt' model, not a translation model" in result.stderr
    result = cli("train", "translate", "--data", str(run_dir.parent / "toy.tsv"), "--out", str(gpt), check=False)
    assert result.returncode == 2 and "files glassformer did not write" in result.stderr
    assert (gpt / "metrics.jsonl").read_text() == "{}\n"
    result = cli("translate", "--model", str(run_dir), "   ", check=False)
    assert result.returncode == 2 and "text 1 is empty" in result.stderr


def test_data_list():
    result = cli("data", "list")
    assert "bible" in result.stdout and "shakespeare" in result.stdout
    assert "  e  German (Elberfelder)" in result.stdout and "  4  English (World English Bible)" in result.stdout


def test_translate_attention_writes_the_alignment_page(run_dir, tmp_path):
    page = tmp_path / "align.html"
    sentence = "ich habe zwei rote Äpfel"
    result = cli("translate", "--model", str(run_dir), "--beam", "3", "--attention", str(page), sentence)
    assert len(result.stdout.splitlines()) == 1 and f"wrote {page}" in result.stderr
    text = page.read_text()
    assert 'id="alignment-data"' in text and "http" not in text.split("<body>")[1].split("alignment-data")[0]
    failed = cli("translate", "--model", str(run_dir), "--attention", str(tmp_path / "a.png"), "x", check=False)
    assert failed.returncode != 0 and "name it .html" in failed.stderr
