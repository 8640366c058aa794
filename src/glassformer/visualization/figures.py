"""The guide's figures, drawn with matplotlib from glassformer's own parts (PNG or SVG, chosen by the suffix).

    attention_figure       one head's attention as a heat map, or all heads of a layer, with token labels
    positional_encoding_figure   PE(pos, i) over positions × dimensions (the guide's Figure 4)
    similarity_figure      cosine similarity of word or sentence embeddings (the guide's Figure 3)
    masks_figure           a batch's padding masks and the look-ahead mask (the guide's Figure 11)
    training_curves_figure a run's loss, validation loss and learning rate from its metrics.jsonl

Each writes the figure to ``path`` and returns that path; with no ``path`` it returns the figure itself (a
matplotlib ``Figure``), which a Jupyter notebook draws inline as a PNG, offline, whatever matplotlib backend is set:
``positional_encoding_figure()`` as a cell's last line shows the figure. Figures have a fixed size in inches and
``DPI`` dots per inch, so a PNG's size in pixels is known (``figure_size``).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import torch
from matplotlib.figure import Figure

from glassformer.files import read_text
from glassformer.options import check_options
from glassformer.visualization.attention import AttentionView

DPI = 100
FORMATS = (".png", ".svg")


class GuideFigure(Figure):
    """A matplotlib ``Figure`` made without pyplot (no window, no global figure list, no backend switched) that
    shows itself in a notebook as a PNG."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, dpi=DPI, format="png")
        return buffer.getvalue()


def _new_figure(width: float, height: float) -> GuideFigure:
    return GuideFigure(figsize=(width, height), dpi=DPI, layout="constrained")


def _check_path(path: str | Path | None) -> Path | None:
    if path is None:
        return None
    path = Path(path)
    if path.suffix not in FORMATS:
        raise ValueError(f"unknown figure format {path.suffix!r} for {path}; use one of {', '.join(FORMATS)}")
    return path


def _finish(fig: GuideFigure, path: str | Path | None) -> GuideFigure | Path:
    """The figure itself (``path`` None), or the file it was written to."""
    path = _check_path(path)
    if path is None:
        return fig
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format=path.suffix[1:])
    return path


MAX_CELLS = 4_000_000  # values drawn in one heat map: beyond this a figure is unreadable and its memory unbounded
MAX_PANELS = 16  # sentences in the masks figure (4 inches each)


def check_figure_size(cells: int, what: str, panels: int = 1) -> None:
    """Refuse a figure whose heat maps would hold more than ``MAX_CELLS`` values (or more than ``MAX_PANELS``
    panels), naming what was asked for."""
    if cells > MAX_CELLS:
        raise ValueError(f"{what} would draw {cells:,} values; at most {MAX_CELLS:,} make a readable figure")
    if panels > MAX_PANELS:
        raise ValueError(f"{what} would draw {panels} panels; give at most {MAX_PANELS}")


def figure_size(width: float, height: float) -> tuple[int, int]:
    """Pixels of a PNG of ``width`` × ``height`` inches."""
    return round(width * DPI), round(height * DPI)


def _heat(ax, matrix, x_labels, y_labels, cmap="Blues", vmin=0.0, vmax=1.0, annotate=False):
    image = ax.imshow(matrix, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    small = max(len(x_labels), len(y_labels)) <= 40
    if small:
        ax.set_xticks(range(len(x_labels)), x_labels, rotation=90, fontsize=8)
        ax.set_yticks(range(len(y_labels)), y_labels, fontsize=8)
    if annotate and small:
        for (i, j), value in zip(
            [(i, j) for i in range(len(y_labels)) for j in range(len(x_labels))], matrix.flatten().tolist(), strict=True
        ):
            ax.text(
                j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color="black" if value > 0.5 else "white"
            )
    return image


def attention_figure(
    view: AttentionView, path: str | Path | None = None, layer: int = 0, head: int | None = None
) -> GuideFigure | Path:
    """Heat map of one head (``head``) or of every head of ``layer`` (``head=None``): rows are queries, columns
    keys. 8 × 8 inches for one head; 4 inches per head, 4 per row, for a layer."""
    layers, heads = view.weights.shape[:2]
    if not 0 <= layer < layers:
        raise ValueError(f"layer {layer} does not exist; the model has layers 0 to {layers - 1}")
    if head is not None and not 0 <= head < heads:
        raise ValueError(f"head {head} does not exist; the model has heads 0 to {heads - 1}")
    chosen = [head] if head is not None else list(range(heads))
    cells = len(chosen) * view.weights.shape[-1] * view.weights.shape[-2]
    check_figure_size(cells, f"{len(chosen)} heads over {view.weights.shape[-1]} tokens", math.ceil(len(chosen) / 4))
    columns = min(4, len(chosen))
    rows = math.ceil(len(chosen) / columns)
    size = (8.0, 8.0) if head is not None else (4.0 * columns, 4.0 * rows)
    fig = _new_figure(*size)
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax, h in zip(axes.flat, chosen, strict=False):
        _heat(ax, view.weights[layer, h].numpy(), view.key_tokens, view.query_tokens)
        ax.set_title(f"{view.name}: layer {layer}, head {h}", fontsize=10)
    for ax in list(axes.flat)[len(chosen) :]:
        ax.axis("off")
    return _finish(fig, path)


def positional_encoding_figure(
    path: str | Path | None = None, max_positions: int = 100, d_model: int = 512
) -> GuideFigure | Path:
    """The sinusoidal encoding PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...), 10 × 5 inches."""
    from glassformer.nn.embedding import sinusoidal_encoding

    check_options(max_seq_length=max_positions, d_model=d_model)
    check_figure_size(max_positions * d_model, f"{max_positions} positions × {d_model} dimensions")
    pe = sinusoidal_encoding(max_positions, d_model)
    fig = _new_figure(10, 5)
    ax = fig.subplots()
    image = ax.imshow(pe.numpy(), cmap="RdBu", vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
    ax.set_xlabel("dimension i")
    ax.set_ylabel("position")
    ax.set_title(f"Positional encoding (d_model = {d_model}, {max_positions} positions)")
    fig.colorbar(image, ax=ax)
    return _finish(fig, path)


def embedding_similarity(
    model: str | Path | None, texts: list[str], device: str | None = None, precision: str | None = None
) -> tuple[torch.Tensor, str]:
    """Cosine similarities ``(n, n)`` of ``texts`` and how they were embedded: sentence embeddings of a BERT model
    (``minilm`` by default; run on ``device`` in ``precision``), else the mean of each text's token embeddings in
    the model's embedding table."""
    if len(texts) < 2 or any(not t.strip() for t in texts):
        raise ValueError("give at least two non-empty words or sentences to compare")
    from glassformer.visualization.attention import model_kind

    model = model or "minilm"
    if model_kind(model) == "bert":
        from glassformer.pipelines.sentence_encoder import SentenceEncoder

        vectors = SentenceEncoder.from_pretrained(model, device, precision).embed(texts)
        how = "sentence embeddings (mean-pooled BERT)"
    else:
        from glassformer.pipelines.language_model import load_language_model

        decoder, tokenizer = load_language_model(model)
        table = decoder.embedding.embedding.weight.detach()  # a lookup: no model run, so on the CPU
        vectors = torch.stack([table[tokenizer.encode(text)].mean(0) for text in texts])
        how = "mean token embeddings"
    vectors = torch.nn.functional.normalize(vectors.float(), dim=-1)
    return vectors @ vectors.t(), how


def similarity_figure(
    texts: list[str],
    path: str | Path | None = None,
    model: str | Path | None = None,
    device: str | None = None,
    precision: str | None = None,
) -> GuideFigure | Path:
    """The cosine-similarity matrix of ``texts`` with values written in, 8 × 7 inches."""
    _check_path(path)  # a wrong suffix is refused before the model runs
    similarity, how = embedding_similarity(model, texts, device, precision)
    labels = [t if len(t) <= 30 else t[:29] + "…" for t in texts]
    fig = _new_figure(8, 7)
    ax = fig.subplots()
    image = _heat(ax, similarity.numpy(), labels, labels, cmap="viridis", vmin=-1, vmax=1, annotate=True)
    ax.set_title(f"Cosine similarity of {how}")
    fig.colorbar(image, ax=ax)
    return _finish(fig, path)


def masks_figure(batch: list[list[str]], path: str | Path | None = None, pad: str = "<pad>") -> GuideFigure | Path:
    """For tokenized sentences of different lengths, padded to the longest: each one's padding mask as the
    attention sees it (keys that may be attended), and the look-ahead mask; True = may attend, as in
    ``glassformer.masks``. 4 inches per panel, 4.5 high."""
    from glassformer.masks import causal_mask, padding_mask

    if not batch or any(not tokens for tokens in batch):
        raise ValueError("give at least one non-empty tokenized sentence")
    length = max(len(tokens) for tokens in batch)
    check_figure_size(length * length * (len(batch) + 1), f"{len(batch)} sentences of {length} tokens", len(batch))
    ids = torch.tensor([[1] * len(tokens) + [0] * (length - len(tokens)) for tokens in batch])
    padded = padding_mask(ids, pad_token_id=0)[:, 0, 0]  # (batch, length): the key positions that are real
    panels = len(batch) + 1
    fig = _new_figure(4.0 * panels, 4.5)
    axes = fig.subplots(1, panels, squeeze=False)
    for b, tokens in enumerate(batch):
        labels = tokens + [pad] * (length - len(tokens))
        matrix = padded[b][None, :].expand(length, length).float().numpy()
        _heat(axes[0, b], matrix, labels, labels, cmap="Greens")
        axes[0, b].set_title(f"padding mask, sentence {b + 1}", fontsize=10)
    positions = [str(i) for i in range(length)]
    _heat(axes[0, -1], causal_mask(length).float().numpy(), positions, positions, cmap="Oranges")
    axes[0, -1].set_title("look-ahead mask (query row sees key column)", fontsize=10)
    return _finish(fig, path)


def training_curves_figure(run: str | Path, path: str | Path | None = None) -> GuideFigure | Path:
    """Training loss, validation loss (and accuracy or perplexity when logged) and learning rate against the
    step, from ``run/metrics.jsonl``; 12 × 4 inches."""
    metrics_file = Path(run) / "metrics.jsonl"
    if not metrics_file.is_file():
        raise FileNotFoundError(f"no metrics.jsonl in {run}; pass a training run directory")
    records = []
    for line in read_text(metrics_file, "metrics file").splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line a killed run cut short
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    train = [r for r in records if isinstance(r.get("loss"), int | float)]
    valid = [r for r in records if isinstance(r.get("valid_loss"), int | float)]
    if not train and not valid:
        raise ValueError(f"{metrics_file} has no loss values yet; train for a few steps first")
    fig = _new_figure(12, 4)
    loss_ax, lr_ax = fig.subplots(1, 2)
    loss_ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="training loss", lw=1)
    loss_ax.plot([r["step"] for r in valid], [r["valid_loss"] for r in valid], "o-", label="validation loss")
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel("loss")
    loss_ax.legend()
    loss_ax.set_title(Path(run).name)
    lr_ax.plot([r["step"] for r in train], [r.get("lr", float("nan")) for r in train], color="tab:green")
    lr_ax.set_xlabel("step")
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_title("schedule")
    return _finish(fig, path)
