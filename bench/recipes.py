"""Which recipe trains more per minute? The paper recipe, the fast one, and each of the fast recipe's changes alone
on top of the paper's, for the same minutes on this machine, one after another in one run.

    translate  German -> English on the Bible (`make demo`'s job: ``--preset auto``, the shape timed with the
               recipe it will train), then BLEU with beam 4 on the 1,462 test verses
    lm         a character-level GPT on Shakespeare, nanoGPT's ``shakespeare_char`` shape; validation loss

    python bench/recipes.py [--tasks translate,lm] [--rows paper,fast,qk_norm,relu2,zero_init,muon,warmdown]
                            (a row fast-CHANGE: the fast recipe without CHANGE)
                            [--translate-minutes 10] [--lm-minutes 5] [--preset auto] [--beam 4] [--out DIR]

Prints the ``glassformer env`` line and one table per task: steps, tokens/s, validation loss, BLEU (translate) and
the difference from the paper row. The machine's speed drifts by up to a fifth between runs (README): compare rows
of one table, not tables of different runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from glassformer import runtime
from glassformer.training import lm, recipes, translation
from glassformer.training.evaluation import evaluate_translation

ROWS = ("paper", "fast", *recipes.CHANGES)


def row_recipe(row: str, task: str) -> tuple[str, recipes.Change]:
    """``(recipe name, its fields)``: paper, fast, the paper recipe with the one change ``row``, or (``fast-muon``)
    the fast recipe without one of its changes, at the fast recipe's learning rate."""
    if row in recipes.RECIPES:
        return row, recipes.recipe(row, task)
    if row.startswith("fast-"):
        left = tuple(c for c in recipes.FAST if c != row.removeprefix("fast-"))
        fields = recipes.recipe("paper", task, changes=left)
        return "paper", recipes.Change(fields.model, {**fields.train, "lr": recipes.FAST_LR[task]})
    return "paper", recipes.recipe("paper", task, changes=(row,))


def tokens_per_second(run: Path) -> float:
    rates = [r["tokens_per_s"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
             if "tokens_per_s" in r]  # fmt: skip
    return sum(rates) / len(rates) if rates else 0.0


def translate_row(row: str, minutes: float, preset: str, beam: int, out: Path) -> dict:
    name, fields = row_recipe(row, "translate")
    train = translation.translation_train_config(name, max_minutes=minutes, progress=False, **fields.train)
    summary = translation.train_translation(out, preset=preset, model_fields=fields.model, train=train, recipe=name,
                                            report=lambda line: print(f"  {row}: {line}", file=sys.stderr))  # fmt: skip
    scores = evaluate_translation(out, num_beams=beam, progress=False)
    return {"preset": summary["preset"], "steps": summary["step"], "tokens/s": tokens_per_second(out),
            "valid loss": summary["valid_loss"], f"BLEU beam {beam}": scores["bleu"]}  # fmt: skip


def lm_row(row: str, minutes: float, out: Path) -> dict:
    name, fields = row_recipe(row, "lm")
    train = lm.lm_train_config(name, max_steps=1_000_000, max_minutes=minutes, eval_every=100_000, progress=False,
                               **fields.train)  # fmt: skip
    shape = {**lm.PRESETS["shakespeare_char"], **fields.model}
    summary = lm.train_language_model(out, model_fields=shape, train=train, recipe=name)
    return {"steps": summary["step"], "tokens/s": tokens_per_second(out), "valid loss": summary["valid_loss"]}


def table(task: str, results: dict[str, dict]) -> str:
    columns = list(next(iter(results.values())))
    lines = [f"| {task} | " + " | ".join(columns) + " | vs paper |", "|---" * (len(columns) + 2) + "|"]
    score = columns[-1]  # BLEU for translation, validation loss for the language model
    for row, result in results.items():
        cells = [f"{v:,.0f}" if k in ("tokens/s", "steps") else f"{v:.3f}" if isinstance(v, float) else str(v)
                 for k, v in result.items()]  # fmt: skip
        delta = result[score] - results["paper"][score] if "paper" in results else float("nan")
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {delta:+.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="translate,lm")
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--translate-minutes", type=float, default=10.0)
    parser.add_argument("--lm-minutes", type=float, default=5.0)
    parser.add_argument("--preset", default="auto", help="translation shape (default auto, as make demo)")
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--out", default=None, help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args()
    rows = args.rows.split(",")
    known = {*ROWS, *(f"fast-{change}" for change in recipes.FAST)}
    unknown = sorted(set(rows) - known) + sorted(set(args.tasks.split(",")) - {"translate", "lm"})
    if unknown:
        parser.error(f"unknown rows or tasks {unknown}; rows: {', '.join(ROWS)}; tasks: translate, lm")
    print(runtime.env_line(), flush=True)
    base = Path(args.out or tempfile.mkdtemp(prefix="recipes-"))
    for task in args.tasks.split(","):
        results = {}
        for row in rows:
            out = base / f"{task}-{row}"
            shutil.rmtree(out, ignore_errors=True)
            start = time.perf_counter()
            if task == "translate":
                results[row] = translate_row(row, args.translate_minutes, args.preset, args.beam, out)
            else:
                results[row] = lm_row(row, args.lm_minutes, out)
            print(f"  {task} {row}: {json.dumps(results[row])} ({time.perf_counter() - start:.0f} s)", flush=True)
        minutes = args.translate_minutes if task == "translate" else args.lm_minutes
        print(f"\n{task}, {minutes:g} minutes of training each:\n{table(task, results)}\n", flush=True)
    if args.out is None:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
