"""`visualize` and `figures`, end to end on small models the tests save."""

import json
import struct

import pytest
from run_glassformer import cli


def test_visualize_writes_a_self_contained_page(gpt_dir, tmp_path):
    out = tmp_path / "attention.html"
    result = cli("visualize", "--model", str(gpt_dir), "the cat", "-o", str(out), "--figures", str(tmp_path))
    assert "wrote" in result.stdout and out.is_file()
    page = out.read_text()
    assert "<script src" not in page and "<link" not in page and "https://" not in page  # nothing fetched
    data = json.loads(page.split('id="attention-data">')[1].split("</script>")[0])
    assert [v["name"] for v in data["views"]] == ["self"] and data["views"][0]["layers"] == 2
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["self-layer0.png", "self-layer1.png"]


def test_visualize_a_translation_run(translation_dir, tmp_path):
    out = tmp_path / "seq2seq.html"
    cli("visualize", "--model", str(translation_dir), "the cat", "--target", "a dog", "-o", str(out))
    data = json.loads(out.read_text().split('id="attention-data">')[1].split("</script>")[0])
    assert [v["name"] for v in data["views"]] == ["encoder", "decoder", "cross"]


@pytest.mark.parametrize(
    ("args", "pixels"),
    [
        (["positional-encoding", "--positions", "40", "--d-model", "32"], (1000, 500)),
        (["masks", "I love cats", "Hello"], (1200, 450)),
        (["attention", "--model", "GPT", "the cat", "--layer", "1", "--head", "0"], (800, 800)),
        (["similarity", "--model", "GPT", "the cat", "the dog", "the mat"], (800, 700)),
    ],
)
def test_figures(gpt_dir, tmp_path, args, pixels):
    out = tmp_path / "figure.png"
    args = [str(gpt_dir) if a == "GPT" else a for a in args]
    cli("figures", *args, "-o", str(out))
    data = out.read_bytes()
    assert struct.unpack(">II", data[16:24]) == pixels


def test_figures_curves_and_errors(gpt_dir, tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 3.0, "lr": 0.001}) + "\n")
    cli("figures", "curves", "--run", str(tmp_path), "-o", str(tmp_path / "curves.svg"))
    assert (tmp_path / "curves.svg").read_text().startswith("<?xml")
    for args, message in [
        (["visualize", "--model", str(gpt_dir), "", "-o", str(tmp_path / "x.html")], "text is empty"),
        (["figures", "attention", "the cat", "-o", str(tmp_path / "x.png")], "needs --model"),
        (["figures", "curves", "--run", str(tmp_path / "none"), "-o", str(tmp_path / "c.png")], "no metrics.jsonl"),
        (["figures", "masks", "a b", "-o", str(tmp_path / "x.gif")], "figure format"),
    ]:
        result = cli(*args, check=False)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
