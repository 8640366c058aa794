"""The attention page: one self-contained HTML file (CSS, JavaScript and data inline; nothing fetched, so it works
from a file, offline, outside a notebook — unlike bertviz, which loads its scripts from a CDN).

The page (``attention_page.html`` / ``.css`` / ``.js`` beside this file) has a head view — query tokens left, key
tokens right, one line per weight with the weight as its opacity, a layer selector, a toggle and a colour per
head, hover a token to see only its lines — and a model view: every layer × head as a small picture, drawn when
it scrolls into sight, click one to enlarge it. For an encoder-decoder a selector switches between encoder,
decoder and cross attention.

Weights are stored as one byte each (weight × 255, rounded) in base64: 256 tokens × 12 layers × 12 heads is 9.4 M
weights, 12.6 MB of page. Lines under ``MIN_LEVEL`` / 255 (about 1%) are not drawn. Up to ``ALL_HEADS_UP_TO``
tokens the head view starts with every head shown, beyond it with head 0 (toggle the others).
"""

from __future__ import annotations

import base64
import html
import json
from importlib import resources
from pathlib import Path

import torch

from glassformer.visualization.attention import AttentionView

MIN_LEVEL = 3  # bytes below this (weights under 3/255 ≈ 1.2%) draw no line
ALL_HEADS_UP_TO = 64
LABELS = {"self": "self-attention", "encoder": "encoder self-attention", "decoder": "decoder self-attention (masked)",
          "cross": "cross-attention (target → source)"}  # fmt: skip


def quantize(weights: torch.Tensor) -> bytes:
    """``(layers, heads, q, k)`` weights in [0, 1] -> one byte each, row-major: round(weight × 255)."""
    return (weights.float().clamp(0, 1) * 255).round().to(torch.uint8).contiguous().numpy().tobytes()


SECTIONS = ("head", "model")


def page_data(views: list[AttentionView], show: tuple[str, ...] = SECTIONS) -> dict:
    """What the page's script reads: per view its tokens, shape and base64 weights; ``show`` the sections drawn
    (``"head"``, ``"model"``)."""
    unknown = set(show) - set(SECTIONS)
    if unknown or not show:
        raise ValueError(f"unknown page section(s) {sorted(unknown)}; show some of {', '.join(SECTIONS)}")
    return {
        "show": list(show),
        "minLevel": MIN_LEVEL,
        "allHeadsUpTo": ALL_HEADS_UP_TO,
        "views": [
            {
                "name": view.name,
                "label": LABELS.get(view.name, view.name),
                "queries": view.query_tokens,
                "keys": view.key_tokens,
                "specialQueries": view.special_queries or [False] * len(view.query_tokens),
                "specialKeys": view.special_keys or [False] * len(view.key_tokens),
                "layers": view.weights.size(0),
                "heads": view.weights.size(1),
                "weights": base64.b64encode(quantize(view.weights)).decode("ascii"),
            }
            for view in views
        ],
    }


def attention_html(views: list[AttentionView], title: str = "Attention", show: tuple[str, ...] = SECTIONS) -> str:
    """The page as a string, with the head view and the model view (``show`` one of them only)."""
    if not views:
        raise ValueError("no attention to draw; pass at least one AttentionView")
    files = resources.files("glassformer.visualization")
    template = files.joinpath("attention_page.html").read_text(encoding="utf-8")
    data = json.dumps(page_data(views, show), ensure_ascii=False).replace("</", "<\\/")  # never closes the <script>
    first = views[0]
    summary = (
        f"{len(first.query_tokens)} tokens, {first.weights.size(0)} layers × {first.weights.size(1)} heads"
        + (f"; {len(views)} kinds of attention" if len(views) > 1 else "")
        + ". Made by glassformer; works offline."
    )
    parts = {
        "__TITLE__": html.escape(title),
        "__SUMMARY__": html.escape(summary),
        "__MIN_PERCENT__": f"{100 * MIN_LEVEL / 255:.1f}",
        "__CSS__": files.joinpath("attention_page.css").read_text(encoding="utf-8"),
        "__JS__": files.joinpath("attention_page.js").read_text(encoding="utf-8"),
    }
    for key, value in parts.items():
        template = template.replace(key, value)
    return template.replace("__DATA__", data)  # last: the data may contain any of the markers above


def save_attention_html(views: list[AttentionView], path: str | Path, title: str = "Attention") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(attention_html(views, title), encoding="utf-8")
    return path


def visualize(model: str | Path, text: str, output: str | Path, target: str | None = None) -> Path:
    """Attention of ``model`` on ``text`` as a self-contained HTML page at ``output`` (see
    ``glassformer.visualization.attention.attention_views`` for the models and ``target``)."""
    from glassformer.visualization.attention import attention_views

    views = attention_views(model, text, target)
    return save_attention_html(views, output, title=f"Attention of {Path(str(model)).name}: {text[:60]}")
