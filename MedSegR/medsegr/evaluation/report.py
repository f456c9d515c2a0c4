"""Evaluation output: a Markdown report and a JSON file (written atomically)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from medsegr.evaluation.evaluate import EvalReport
from medsegr.io.images import atomic_output

METHOD_TITLES = {"medsegr": "MedSegR", "oracle_box": "LiteMedSAM + GT box (oracle)",
                 "otsu": "Otsu threshold (floor)"}


def _f(value: float | int) -> str:
    if isinstance(value, int):
        return str(value)
    return "–" if math.isnan(value) else f"{value:.3f}"


def _table(title: str, groups: dict[str, dict[str, dict]], methods: list[str]) -> list[str]:
    lines = [f"### {title}", ""]
    header = "| group | n |" + "".join(f" {METHOD_TITLES.get(m, m)} Dice | gIoU | cIoU |"
                                       for m in methods)
    lines.append(header)
    lines.append("|" + "---|" * (2 + 3 * len(methods)))
    keys = sorted({k for m in methods for k in groups.get(m, {})})
    for key in keys:
        n = groups["medsegr"].get(key, {}).get("n", 0)
        row = f"| {key} | {n} |"
        for m in methods:
            s = groups.get(m, {}).get(key)
            row += (f" {_f(s['dice'])} | {_f(s['giou'])} | {_f(s['ciou'])} |" if s
                    else " – | – | – |")
        lines.append(row)
    return lines + [""]


def markdown(report: EvalReport) -> str:
    data = report.to_dict()
    methods = report.methods()
    text = data["text"]
    lines = [
        f"## Evaluation: `{report.split}` split of `{Path(report.dataset).name}`", "",
        f"Checkpoint: `{report.checkpoint}` ({'fine-tuned' if report.fine_tuned else 'base parts, not fine-tuned'}); "
        f"{len(report.turns)} questions in {report.seconds:.0f} s.", "",
    ]
    lines += _table("All masks", {m: {"all": data["overall"][m]} for m in methods}, methods)
    lines += _table("By question type", data["by_question_type"], methods)
    lines += _table("By structure", data["by_structure"], methods)
    lines += [
        "### Text", "",
        "| measure | value |", "|---|---|",
        f"| answers that name every expected structure (by name or vocabulary code) | "
        f"{_f(text['named_right_rate'])} (of {text['answers_with_structures']}) |",
        f"| … by the structure's own name | {_f(text.get('named_as_written_rate', float('nan')))} |",
        f"| absent-structure questions answered without a mask | "
        f"{_f(text['absent_without_mask_rate'])} (of {text['absent_questions']}) |",
        f"| absent-structure questions with a wrongly claimed mask | "
        f"{_f(text['false_claim_rate'])} |",
        f"| stated facts (side, area, size, count, density) true of the slice | "
        f"{_f(text['facts_correct_rate'])} (of {text['facts_stated']}) |",
        f"| comparative answers that agree with the engine's measurements | "
        f"{_f(text.get('comparative_agree_rate', float('nan')))} "
        f"(of {text.get('comparative_questions', 0)}) |",
        f"| answers with a word the engine picked from its measurements | "
        f"{text.get('answers_with_engine_words', 0)} (of {len(report.turns)}) |", "",
    ]
    return "\n".join(lines)


def write_report(report: EvalReport, out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "eval.json", "markdown": out / "eval.md"}
    with atomic_output(paths["json"]) as tmp:
        tmp.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    with atomic_output(paths["markdown"]) as tmp:
        tmp.write_text(markdown(report) + "\n", encoding="utf-8")
    return paths
