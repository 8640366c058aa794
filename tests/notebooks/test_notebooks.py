"""The guide as notebooks (notebooks/), each run top to bottom by a real Jupyter kernel (nbclient + ipykernel), with
GLASSFORMER_NOTEBOOK_QUICK=1 (tiny sizes); every cell must run, and the views and figures must come out as a
notebook shows them: an inline, offline page (an iframe of the page itself, nothing fetched) or a PNG."""

import base64
import concurrent.futures
import html
import os
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is a test dependency (pip install -e '.[dev]')")
nbclient = pytest.importorskip("nbclient", reason="nbclient is a test dependency (pip install -e '.[dev]')")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


def test_there_is_a_notebook_per_section_of_the_guide():
    names = [path.stem for path in NOTEBOOKS]
    assert len(names) == 8 and names[1] == "02-attention", names


def outputs(notebook) -> list[dict]:
    return [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]


def execute(path: Path, folder: Path):
    """The notebook run top to bottom by a fresh kernel in ``folder``: the executed notebook, or the exception."""
    notebook = nbformat.read(path, as_version=4)
    if any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"):
        return AssertionError(f"{path.name} is stored with outputs; clear them before committing")
    folder.mkdir()
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(folder)}})  # fmt: skip
    try:
        client.execute()  # a cell that raises: CellExecutionError with the cell and its traceback
    except Exception as error:
        return error
    return notebook


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Every notebook executed, two kernels at a time (each is a process of its own; the wait is mostly theirs)."""
    saved = dict(os.environ)
    os.environ["GLASSFORMER_NOTEBOOK_QUICK"] = "1"  # the kernels inherit this process's environment
    os.environ["OMP_NUM_THREADS"] = "1"  # two kernels at once: one core each
    try:
        folder = tmp_path_factory.mktemp("notebooks")
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            runs = {path.stem: pool.submit(execute, path, folder / path.stem) for path in NOTEBOOKS}
            return {name: run.result() for name, run in runs.items()}
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_the_notebook_runs_top_to_bottom_in_a_kernel(path, executed):
    notebook = executed[path.stem]
    if isinstance(notebook, Exception):
        raise notebook
    shown = outputs(notebook)
    assert not [o for o in shown if o.output_type == "error"]
    pages = [o.data["text/html"] for o in shown if "<iframe srcdoc=" in o.get("data", {}).get("text/html", "")]
    pngs = [base64.b64decode(o.data["image/png"]) for o in shown if "image/png" in o.get("data", {})]
    for page in pages:  # the page inside the frame: its script and data inline, nothing to fetch
        inner = html.unescape(re.search(r'srcdoc="(.*?)"', page, re.S).group(1))
        assert "default-src 'none'" in inner and "<script>" in inner
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)|url\(\s*["']?https?:|@import""", inner)
    assert all(png.startswith(b"\x89PNG") for png in pngs)
    expected = {"01": (0, 2), "02": (1, 0), "03": (0, 1), "05": (1, 1), "07": (1, 0), "08": (3, 1)}  # (pages, PNGs)
    if path.stem[:2] in expected:
        assert (len(pages), len(pngs)) == expected[path.stem[:2]]
