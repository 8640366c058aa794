"""The attention page in a real browser: Debian's Chromium, headless, driven by Playwright, network blocked.

Skipped with a reason where Playwright or Chromium is missing; `.ci/run` installs Chromium so that CI runs them.
Screenshots are saved in test-artifacts/ at the repository's root.
"""

import base64
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from glassformer.visualization import AttentionView, attention_views, save_attention_html

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("no Chromium at /usr/bin/chromium (apt-get install -y chromium; .ci/run does)", allow_module_level=True)
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        except Exception as error:  # e.g. a Chromium that cannot start in this container
            pytest.skip(f"Chromium did not start: {error}")
        yield browser
        browser.close()


def open_page(browser, path: Path):
    """The file in a fresh page whose every non-file request is aborted and recorded, once its script is ready."""
    page, outside, errors = open_page_without_waiting(browser, path)
    page.wait_for_selector("body[data-ready=true]", timeout=30_000)
    return page, outside, errors


def open_page_without_waiting(browser, path: Path):
    """The file in a fresh page whose every non-file request (a frame's too) is aborted and recorded."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    outside = []

    def route(route):
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", route)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(path.as_uri())
    return page, outside, errors


def page_weights(path: Path) -> dict:
    """The data embedded in the page, with each view's weights as bytes (layers, heads, q, k)."""
    text = path.read_text(encoding="utf-8")
    blob = re.search(r'<script type="application/json" id="attention-data">(.*?)</script>', text, re.S).group(1)
    data = json.loads(blob.replace("<\\/", "</"))
    for view in data["views"]:
        shape = (view["layers"], view["heads"], len(view["queries"]), len(view["keys"]))
        view["bytes"] = np.frombuffer(base64.b64decode(view["weights"]), dtype=np.uint8).reshape(shape)
    return data


@pytest.fixture(scope="module")
def bert_page(tmp_path_factory):
    views = attention_views("minilm", "I love transformers, they are great!")
    return save_attention_html(views, tmp_path_factory.mktemp("page") / "attention.html", "MiniLM")


def test_head_view_lines_match_the_weights_and_nothing_leaves_the_page(browser, bert_page):
    page, outside, errors = open_page(browser, bert_page)
    data = page_weights(bert_page)
    view = data["views"][0]
    assert page.locator("#view-select").is_hidden()  # one kind of attention: no selector
    page.select_option("#layer-select", "3")
    page.click("#no-heads")
    assert page.locator("#head-view line").count() == 0
    page.check('input[data-head="5"]')
    lines = page.eval_on_selector_all(
        "#head-view line",
        "ls => ls.map(l => [+l.dataset.head, +l.dataset.query, +l.dataset.key, +l.getAttribute('stroke-opacity')])",
    )
    expected = view["bytes"][3, 5]
    assert len(lines) == int((expected >= data["minLevel"]).sum()) > 0
    for head, i, j, opacity in lines:
        assert head == 5 and abs(opacity - expected[i, j] / 255) < 1e-4
    page.check('input[data-head="7"]')  # a second head adds its own lines, in its own colour
    colours = set(page.eval_on_selector_all("#head-view line", "ls => ls.map(l => l.getAttribute('stroke'))"))
    assert len(colours) == 2
    assert page.locator("#head-view line").count() == int((view["bytes"][3, [5, 7]] >= data["minLevel"]).sum())

    page.hover("#head-view text.left[data-index='2']")  # hover a query token: only its lines stay visible
    visible = page.eval_on_selector_all(
        "#head-view line", "ls => ls.filter(l => getComputedStyle(l).display !== 'none').map(l => +l.dataset.query)"
    )
    assert visible and set(visible) == {2}
    assert outside == [] and errors == []


def test_model_view_cell_enlarges_on_click(browser, bert_page):
    page, outside, errors = open_page(browser, bert_page)
    cells = page.locator("canvas.cell")
    assert cells.count() == 6 * 12
    cell = page.locator("canvas.cell[data-layer='2'][data-head='7']")
    cell.scroll_into_view_if_needed()
    page.wait_for_function("document.querySelector(\"canvas.cell[data-layer='2'][data-head='7']\").dataset.drawn")
    assert page.locator("#zoom").is_hidden()
    cell.click()
    zoom = page.locator("#zoom")
    assert zoom.is_visible() and zoom.get_attribute("data-layer") == "2" and zoom.get_attribute("data-head") == "7"
    big = page.locator("#zoom canvas").bounding_box()
    small = cell.bounding_box()
    assert big["width"] > 4 * small["width"] and "layer 2, head 7" in page.inner_text("#zoom .caption")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "attention-model-view-zoom.png"))
    page.keyboard.press("Escape")
    assert zoom.is_hidden()
    page.screenshot(path=str(ARTIFACTS / "attention-page.png"), full_page=False)
    assert outside == [] and errors == []


def test_seq2seq_page_switches_between_encoder_decoder_and_cross(browser, translation_dir, tmp_path):
    views = attention_views(translation_dir, "the cat", target="a dog")
    path = save_attention_html(views, tmp_path / "seq2seq.html")
    page, outside, errors = open_page(browser, path)
    assert page.locator("#view-select option").all_inner_texts() == [
        "encoder self-attention", "decoder self-attention (masked)", "cross-attention (target → source)"
    ]  # fmt: skip
    page.select_option("#view-select", "2")
    left = page.eval_on_selector_all("#head-view text.left", "ts => ts.map(t => t.textContent)")
    right = page.eval_on_selector_all("#head-view text.right", "ts => ts.map(t => t.textContent)")
    assert left == views[2].query_tokens and right == views[2].key_tokens
    assert page.locator("#head-view text.left.special").count() == 1  # the BOS token, styled as special
    page.select_option("#view-select", "1")  # decoder: causal, so no line goes to a later key
    lines = page.eval_on_selector_all("#head-view line", "ls => ls.map(l => [+l.dataset.query, +l.dataset.key])")
    assert lines and all(key <= query for query, key in lines)
    assert outside == [] and errors == []


def test_a_long_input_stays_usable(browser, tmp_path):
    """256 tokens x 12 layers x 12 heads: the page opens in seconds and draws the model view on demand."""
    torch.manual_seed(0)
    weights = (torch.randn(12, 12, 256, 256) * 3).softmax(-1)
    tokens = [f"tok{i}" for i in range(256)]
    path = save_attention_html([AttentionView("self", tokens, tokens, weights)], tmp_path / "long.html")
    start = time.perf_counter()
    page, outside, errors = open_page(browser, path)
    opened = time.perf_counter() - start
    assert page.eval_on_selector_all("canvas.cell", "cs => cs.filter(c => c.dataset.drawn).length") == 0  # below
    page.locator("canvas.cell[data-layer='0'][data-head='0']").scroll_into_view_if_needed()  # the head view's fold
    page.wait_for_selector("canvas.cell[data-drawn]")
    drawn = page.eval_on_selector_all("canvas.cell", "cs => cs.filter(c => c.dataset.drawn).length")
    assert opened < 20 and 0 < drawn < 144  # only the pictures in sight are drawn
    assert page.locator("input[data-head]:checked").count() == 1  # long input: head 0 only, to start
    start = time.perf_counter()
    page.select_option("#layer-select", "11")
    page.check('input[data-head="3"]')
    assert time.perf_counter() - start < 10
    data = page_weights(path)
    expected = int((data["views"][0]["bytes"][11, [0, 3]] >= data["minLevel"]).sum())
    assert page.locator("#head-view line").count() == expected
    assert outside == [] and errors == []


def test_alignment_page_draws_the_cross_attention_beside_the_beam(browser, translation_dir, tmp_path):
    from glassformer.visualization import alignments, save_alignment_html

    items = alignments(translation_dir, ["the cat", "a dog sat"], num_beams=3)
    path = save_alignment_html(items, tmp_path / "alignment.html")
    page, outside, errors = open_page(browser, path)
    first = items[0].hypotheses[0]
    assert page.locator("#hypotheses tbody tr").count() == 3
    assert page.locator("#hypotheses tbody tr").nth(0).inner_text().endswith(first.text)
    rows = page.locator("#alignment tbody tr")
    assert rows.count() == len(first.target_tokens)
    assert page.locator("#alignment tbody td").count() == len(first.target_tokens) * len(items[0].source_tokens)
    # layer 1, head 0: the cells are that head's weights (one byte each); the mean of all is the default
    page.select_option("#layer-select", "1")
    page.select_option("#head-select", "0")
    cells = page.eval_on_selector_all("#alignment tbody tr:nth-child(2) td", "ts => ts.map(t => +t.dataset.weight)")
    expected = (first.weights[1, 0, 1].clamp(0, 1) * 255).round() / 255
    assert cells == pytest.approx(expected.tolist(), abs=1e-3)
    rows.nth(2).hover()  # what else the model considered at step 3
    alternatives = page.locator("#alternatives div")
    assert alternatives.count() == 5 and page.get_attribute("#alternatives", "data-step") == "2"
    assert page.locator("#alternatives div").nth(0).inner_text().startswith(f"{first.alternatives[2][0][1]:.3f}")
    page.locator("#hypotheses tbody tr").nth(2).click()  # the third hypothesis' alignment
    assert rows.count() == len(items[0].hypotheses[2].target_tokens)
    page.select_option("#sentence-select", "1")
    assert page.locator("#alignment thead th").count() == 1 + len(items[1].source_tokens)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "alignment-page.png"))
    assert outside == [] and errors == []


@pytest.mark.parametrize("which", ["head", "model"])
def test_inline_views_draw_inside_a_notebook_s_output(browser, gpt_dir, tmp_path, which):
    """What Jupyter puts in a cell's output: the view's ``_repr_html_``; its frame runs the page, offline."""
    from glassformer.visualization import head_view, model_view

    view = (head_view if which == "head" else model_view)(gpt_dir, "the cat sat")
    notebook = tmp_path / "notebook.html"
    notebook.write_text(f"<html><body><h1>a notebook</h1><div class='output'>{view._repr_html_()}</div></body></html>")
    page, outside, errors = open_page_without_waiting(browser, notebook)
    frame = page.frame_locator("iframe")
    frame.locator("body[data-ready=true]").wait_for(timeout=30_000)
    other = "model" if which == "head" else "head"
    assert frame.locator(f"#{which}-section").is_visible() and frame.locator(f"#{other}-section").is_hidden()
    if which == "head":
        tokens = attention_views(gpt_dir, "the cat sat")[0].query_tokens
        assert frame.locator("#head-view text.left").all_text_contents() == tokens
    else:
        assert frame.locator("canvas.cell").count() == 2 * 2
    page.screenshot(path=str(ARTIFACTS / f"inline-{which}-view.png"))
    assert outside == [] and errors == []
