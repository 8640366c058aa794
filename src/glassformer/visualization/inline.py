"""The attention pages inline in a Jupyter notebook (or VS Code, or any page that shows HTML), offline.

    from glassformer.visualization import head_view, model_view, alignment_view
    head_view("minilm", "The cat sat on the mat.")            # a cell's last line: the view draws below it
    model_view("runs/de-en", "Im Anfang war das Wort.")         # encoder, decoder and cross attention
    alignment_view("runs/de-en", "Im Anfang war das Wort.")    # cross-attention beside the beam's choices

Each returns an ``InlinePage``: the same self-contained page as ``glassformer visualize`` (script, style and data
inline, nothing fetched — unlike bertviz, whose views load their scripts from a CDN), shown in a sandboxed
``<iframe srcdoc>`` so that its script runs in any notebook front end and its style cannot touch the notebook's.
``.save(path)`` writes it as a file. The first argument is any model ``attention_views`` loads (a run directory,
a checkpoint, ``gpt2``-layout or Llama or BERT folders, ``minilm``, ``smollm2``, a ``.gguf`` file), or views
already computed (a list of ``AttentionView``). The guide's figures (``glassformer.visualization.figures``) show
inline by themselves: call one without a path.
"""

from __future__ import annotations

import html
from pathlib import Path

from glassformer.visualization.attention import AttentionView, attention_views
from glassformer.visualization.html import attention_html

MAX_HEIGHT = 900  # pixels of notebook the frame takes at most; the page scrolls inside it


class InlinePage:
    """A self-contained HTML page that a notebook draws inline (``_repr_html_``) and ``save`` writes to a file."""

    def __init__(self, page: str, height: int, title: str):
        self.page = page
        self.height = min(max(int(height), 200), MAX_HEIGHT)
        self.title = title

    def _repr_html_(self) -> str:
        source = html.escape(self.page, quote=True)
        return (
            f'<iframe srcdoc="{source}" title="{html.escape(self.title, quote=True)}" sandbox="allow-scripts" '
            f'style="width: 100%; height: {self.height}px; border: 1px solid #ddd;"></iframe>'
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.page, encoding="utf-8")
        return path

    def __repr__(self) -> str:
        return f"<InlinePage {self.title!r}: {len(self.page):,} characters; shown inline in a notebook>"


def _views(
    model, text: str | None, target: str | None, device: str | None, precision: str | None
) -> tuple[list[AttentionView], str]:
    if isinstance(model, list):
        if not model or not all(isinstance(view, AttentionView) for view in model):
            raise ValueError("pass a model (a path or a name such as minilm) or a non-empty list of AttentionView")
        return model, "Attention"
    if text is None:
        raise ValueError("give the text to look at: head_view(model, text)")
    views = attention_views(model, text, target, device, precision)
    return views, f"Attention of {Path(str(model)).name}: {text[:60]}"


def head_view(
    model, text: str | None = None, target: str | None = None, device: str | None = None, precision: str | None = None
) -> InlinePage:
    """The head view alone: query tokens left, key tokens right, one line per weight; layer selector, head
    toggles, hover a token to see only its lines."""
    views, title = _views(model, text, target, device, precision)
    tokens = max(len(view.query_tokens) for view in views)
    return InlinePage(attention_html(views, title, show=("head",)), 230 + 18 * tokens, title)


def model_view(
    model, text: str | None = None, target: str | None = None, device: str | None = None, precision: str | None = None
) -> InlinePage:
    """The model view alone: every layer × head as a small picture; click one to enlarge it."""
    views, title = _views(model, text, target, device, precision)
    layers = max(view.weights.size(0) for view in views)
    return InlinePage(attention_html(views, title, show=("model",)), 260 + 90 * layers, title)


def alignment_view(
    model,
    texts: str | list[str],
    num_beams: int = 4,
    length_penalty: float = 1.0,
    device: str | None = None,
    precision: str | None = None,
) -> InlinePage:
    """A translation's cross-attention as an alignment table beside the beam's hypotheses (and, per target token,
    what else the model considered): ``glassformer.visualization.alignment``. ``model`` is a `train translate` run,
    a model directory or a ``Translator``; ``texts`` one source sentence or several (a selector switches)."""
    from glassformer.visualization.alignment import alignment_html, alignments

    items = alignments(model, texts, num_beams, length_penalty, device=device, precision=precision)
    title = f"Alignments of {Path(model).name}" if isinstance(model, str | Path) else "Translation alignments"
    size = max(len(h.target_tokens) for item in items for h in item.hypotheses)
    return InlinePage(alignment_html(items, title), 420 + 24 * num_beams + 20 * size, title)
