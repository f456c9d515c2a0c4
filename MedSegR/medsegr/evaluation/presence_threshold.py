"""Choose ``[model] presence_threshold`` from the answers the model itself generated on
validation data.

::

    medsegr eval CHECKPOINT DATASET --split val --out eval-val
    python -m medsegr.evaluation.presence_threshold eval-val/eval.json [--json FILE]

Every ``[SEG]`` of an evaluation report (``medsegr eval``) carries the grounding module's
presence probability (the highest over the slices asked about). Two kinds count:

* **absent**: the ``[SEG]``s of answers to questions about a structure that is not in the
  image. Such an answer is *declined* at threshold ``t`` when none of its ``[SEG]``s
  reaches ``t`` (an answer without ``[SEG]`` is declined at any threshold);
* **present**: the ``[SEG]``s of other answers whose name is one of the structures the
  question asked for (:func:`medsegr.evaluation.evaluate.names_structure`). Such a
  ``[SEG]`` is *kept* at ``t`` when its presence reaches ``t``.

The chosen threshold maximises ``declined + kept`` (shares of their kinds); among equal
scores the middle one. The table of every threshold is printed (and written with
``--json``); ``--write CHECKPOINT`` sets it as the checkpoint's ``[model]
presence_threshold`` (its ``medsegr_config.json``, with the choice recorded under
``training.presence_threshold``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from medsegr.evaluation.evaluate import names_structure

#: the thresholds tried
GRID = tuple(round(0.05 * k, 2) for k in range(1, 20))


def presence_rows(report: dict[str, Any]) -> tuple[list[list[float]], list[float]]:
    """From an evaluation report's turns: the presence lists of the answers to absent
    questions, and the presences of the present, rightly named ``[SEG]``s."""
    absent: list[list[float]] = []
    present: list[float] = []
    for turn in report.get("turns", []):
        names = list(turn.get("seg_names") or [])
        scores = [float(p) for p in turn.get("presence") or []]
        if turn.get("absent_ok") is not None:
            absent.append(scores)
            continue
        expected = list(turn.get("expected") or [])
        for name, score in zip(names, scores):
            if any(names_structure(name, e) or names_structure(e, name) for e in expected):
                present.append(score)
    return absent, present


def sweep(absent: list[list[float]], present: list[float],
          grid: tuple[float, ...] = GRID) -> list[dict[str, float]]:
    rows = []
    for t in grid:
        declined = (sum(all(p < t for p in scores) for scores in absent) / len(absent)
                    if absent else float("nan"))
        kept = sum(p >= t for p in present) / len(present) if present else float("nan")
        rows.append({"threshold": t, "absent_declined": round(declined, 4),
                     "present_kept": round(kept, 4), "score": round(declined + kept, 4)})
    return rows


def choose(rows: list[dict[str, float]]) -> float:
    """The threshold of the best ``score``; the middle one of a tie."""
    best = max(r["score"] for r in rows)
    tied = [r["threshold"] for r in rows if r["score"] == best]
    return tied[len(tied) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medsegr.evaluation.presence_threshold",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="eval.json of `medsegr eval`")
    parser.add_argument("--json", type=Path, help="write the table and the choice here")
    parser.add_argument("--write", type=Path, metavar="CHECKPOINT",
                        help="set the chosen threshold in this checkpoint folder's config")
    args = parser.parse_args(argv)
    try:
        report = json.loads(args.report.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"error: cannot read {args.report}: {exc}", file=sys.stderr)
        return 2
    absent, present = presence_rows(report)
    if not absent or not present:
        print(f"error: {args.report} has {len(absent)} answers to absent questions and "
              f"{len(present)} present [SEG]s with presence scores; both are needed (a report "
              "of `medsegr eval` from this version)", file=sys.stderr)
        return 2
    rows = sweep(absent, present)
    chosen = choose(rows)
    print(f"{len(absent)} answers to absent questions, {len(present)} present [SEG]s "
          f"({report.get('split', '?')} split of {report.get('dataset', '?')})")
    print(f"{'threshold':>9s}  {'declined':>8s}  {'kept':>6s}")
    for r in rows:
        mark = "  <- chosen" if r["threshold"] == chosen else ""
        print(f"{r['threshold']:9.2f}  {r['absent_declined']:8.3f}  {r['present_kept']:6.3f}{mark}")
    if args.json:
        args.json.write_text(json.dumps({"report": str(args.report), "absent_answers": len(absent),
                                         "present_segs": len(present), "rows": rows,
                                         "chosen": chosen}, indent=2) + "\n", encoding="utf-8")
    if args.write:
        row = next(r for r in rows if r["threshold"] == chosen)
        try:
            write_threshold(args.write, chosen, {**row, "split": report.get("split"),
                                                 "absent_answers": len(absent),
                                                 "present_segs": len(present)})
        except (OSError, ValueError, KeyError) as exc:
            print(f"error: cannot set the threshold in {args.write}: {exc}", file=sys.stderr)
            return 2
        print(f"set [model] presence_threshold = {chosen} in {args.write / 'medsegr_config.json'}")
    return 0


def write_threshold(checkpoint: Path, threshold: float, evidence: dict[str, Any]) -> None:
    """Set ``[model] presence_threshold`` in ``checkpoint``'s ``medsegr_config.json``
    (atomically), recording ``evidence`` under ``training.presence_threshold``."""
    from medsegr.io.atomic import atomic_path

    file = checkpoint / "medsegr_config.json"
    data = json.loads(file.read_text(encoding="utf-8"))
    data["config"]["model"]["presence_threshold"] = float(threshold)
    data.setdefault("training", {})["presence_threshold"] = evidence
    with atomic_path(file) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
