"""The guide's figures: written, non-empty, of the size asked for (PNG), and SVG too."""

import json
import struct

import pytest

from glassformer.visualization import attention_views
from glassformer.visualization.figures import (
    attention_figure,
    figure_size,
    masks_figure,
    positional_encoding_figure,
    similarity_figure,
    training_curves_figure,
)


def png_size(path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def view(gpt_dir):
    return attention_views(gpt_dir, "the cat sat")[0]


def test_attention_heat_maps(tmp_path, view):
    one = attention_figure(view, tmp_path / "head.png", layer=1, head=0)
    assert png_size(one) == figure_size(8, 8)
    layer = attention_figure(view, tmp_path / "layer.png", layer=0)  # 2 heads side by side
    assert png_size(layer) == figure_size(8, 4)
    svg = attention_figure(view, tmp_path / "layer.svg", layer=0).read_text()
    assert svg.startswith("<?xml") and "layer 0, head 1" in svg
    with pytest.raises(ValueError, match="layers 0 to 1"):
        attention_figure(view, tmp_path / "x.png", layer=2)
    with pytest.raises(ValueError, match="figure format"):
        attention_figure(view, tmp_path / "x.jpg", layer=0)


def test_positional_encoding_masks_and_similarity(tmp_path, gpt_dir):
    assert png_size(positional_encoding_figure(tmp_path / "pe.png", 50, 64)) == figure_size(10, 5)
    assert png_size(masks_figure([["I", "love", "cats"], ["Hello"]], tmp_path / "m.png")) == figure_size(12, 4.5)
    similarity = similarity_figure(["the cat", "the dog", "a bird"], tmp_path / "s.png", model=gpt_dir)
    assert png_size(similarity) == figure_size(8, 7) and similarity.stat().st_size > 10_000
    with pytest.raises(ValueError, match="at least two"):
        similarity_figure(["alone"], tmp_path / "s.png", model=gpt_dir)


def test_training_curves(tmp_path):
    records = [{"step": s, "loss": 5 / s, "lr": 1e-3, "tokens_per_s": 100} for s in range(1, 41)]
    records += [{"step": s, "valid_loss": 6 / s, "valid_ppl": 2.0} for s in (10, 20, 30, 40)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert png_size(training_curves_figure(tmp_path, tmp_path / "curves.png")) == figure_size(12, 4)
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        training_curves_figure(tmp_path / "nothing", tmp_path / "c.png")


def test_training_curves_skip_a_line_a_killed_run_cut_short(tmp_path):
    lines = [{"step": 1, "loss": 3.0, "lr": 1e-3}, {"step": 2, "loss": 2.5, "lr": 1e-3}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 3, "lo')
    assert png_size(training_curves_figure(tmp_path, tmp_path / "curves.png")) == figure_size(12, 4)


def test_figures_too_large_to_read_are_refused(tmp_path):
    with pytest.raises(ValueError, match="409,600,000 values"):
        positional_encoding_figure(tmp_path / "pe.png", 100_000, 4096)
    with pytest.raises(ValueError, match="at most 16"):
        masks_figure([["a"]] * 17, tmp_path / "masks.png")


def test_without_a_path_each_figure_is_returned_and_shows_itself_as_a_png(tmp_path, view, gpt_dir):
    """What a notebook cell shows: the figure's PNG (IPython calls ``_repr_png_``), no file, no pyplot state."""
    import matplotlib.pyplot as plt

    records = [{"step": s, "loss": 5 / s, "lr": 1e-3} for s in range(1, 11)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    before = plt.get_fignums()
    figures = {
        figure_size(8, 8): attention_figure(view, layer=1, head=0),
        figure_size(10, 5): positional_encoding_figure(max_positions=50, d_model=64),
        figure_size(12, 4.5): masks_figure([["I", "love", "cats"], ["Hello"]]),
        figure_size(8, 7): similarity_figure(["the cat", "the dog"], model=gpt_dir),
        figure_size(12, 4): training_curves_figure(tmp_path),
    }
    for size, figure in figures.items():
        png = figure._repr_png_()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == size
    assert plt.get_fignums() == before and list(tmp_path.iterdir()) == [tmp_path / "metrics.jsonl"]
    with pytest.raises(ValueError, match="figure format"):  # refused before the model runs
        similarity_figure(["the cat", "the dog"], tmp_path / "s.jpg", model="no-such-model")
