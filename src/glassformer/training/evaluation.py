"""Scoring a translation model: BLEU and chrF with ``sacrebleu`` on detokenized text.

The model's outputs are decoded back to plain text and compared with the references as they are in the corpus
(sacrebleu's default 13a tokenization for BLEU). Per-sentence outputs go to ``<run>/<split>.beam<N>.tsv``
(``.beam<N>.int8.tsv`` quantized; source, reference, hypothesis) and each evaluation is appended to
``<run>/evaluation.jsonl``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import sacrebleu
from tqdm import tqdm

from glassformer.data.parallel import read_parallel
from glassformer.models.quantization import Quantization
from glassformer.options import check_options
from glassformer.pipelines.translator import Translator
from glassformer.training.run_directory import check_data_fingerprint, read_run_record
from glassformer.training.translation import RUN_FILE, DataSpec


def score_translations(hypotheses: list[str], references: list[str]) -> dict[str, Any]:
    """Corpus BLEU and chrF of ``hypotheses`` against one reference each."""
    bleu = sacrebleu.corpus_bleu(hypotheses, [references])
    chrf = sacrebleu.corpus_chrf(hypotheses, [references])
    return {"bleu": round(bleu.score, 2), "chrf": round(chrf.score, 2), "bleu_detail": str(bleu)}


def evaluate_translation(
    run: str | Path,
    split: str = "test",
    data: str | None = None,
    num_beams: int = 4,
    length_penalty: float = 1.0,
    limit: int | None = None,
    progress: bool = True,
    device: str | None = None,
    precision: str | None = None,
    quantization: Quantization | None = None,
) -> dict[str, Any]:
    """Translate a split of the run's corpus (or every pair of the file ``data``) and score it; the model runs on
    ``device`` in ``precision`` (default the CPU in float32; ``auto`` for ``glassformer.runtime``'s choice), quantized
    as ``quantization`` asks."""
    run = Path(run)
    check_options(num_beams=num_beams, length_penalty=length_penalty, limit=limit)
    translator = Translator.load(run, device, precision, quantization)  # checks that it holds a translation model
    if data is not None:
        paths = data.split(",", 1)
        pairs, split = read_parallel(*paths), Path(paths[0]).stem
    else:
        if not (run / RUN_FILE).is_file():
            raise FileNotFoundError(f"{run} has no {RUN_FILE}; pass the run directory of `train translate` or --data")
        record = read_run_record(run / RUN_FILE)
        spec = DataSpec(**record["data"])
        check_data_fingerprint(record.get("data_sha256"), spec.data)
        splits = spec.load()
        if split not in splits:
            raise ValueError(f"unknown split {split!r}; choose train, valid or test")
        pairs = splits[split]
    pairs = pairs[:limit] if limit else pairs
    sources, references = [s for s, _ in pairs], [t for _, t in pairs]
    start = time.perf_counter()
    with tqdm(total=len(pairs), disable=not progress, desc=f"translate {split}", unit="sent") as bar:
        hypotheses = translator.translate(sources, num_beams=num_beams, length_penalty=length_penalty, progress=bar)
    seconds = time.perf_counter() - start
    result = {"split": split, "pairs": len(pairs), "beam": num_beams, "length_penalty": length_penalty}
    if quantization is not None:
        result["quantization"] = dataclasses.asdict(quantization)
    result.update(score_translations(hypotheses, references), seconds=round(seconds, 1))
    if (run / RUN_FILE).is_file():  # beside the run's own files; never into a directory glassformer did not write
        outputs = run / f"{split}.beam{num_beams}{'.' + quantization.kind if quantization else ''}.tsv"
        rows = (f"{s}\t{r}\t{h}\n" for s, r, h in zip(sources, references, hypotheses, strict=True))
        outputs.write_text("source\treference\thypothesis\n" + "".join(rows), encoding="utf-8")
        result["outputs"] = str(outputs)
        with open(run / "evaluation.jsonl", "a") as f:
            f.write(json.dumps(result) + "\n")
    return result
