"""Writing an answer to disk: segmentation, label map, JSON and overlay.

All files are first written into a hidden staging folder inside the output
folder and moved into place only when every one of them was written
(:func:`medsegr.io.atomic.atomic_files`), so a failure never leaves a partial set
of results behind and earlier results stay exactly as they were.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from medsegr.answers import Answer
from medsegr.errors import InputError
from medsegr.io.atomic import atomic_files
from medsegr.io.images import MedicalImage
from medsegr.io.segmentation_files import (
    SegmentSpec, coded_segment, write_labelmap_nrrd, write_seg_nrrd)
from medsegr.cli.overlay import render_overlay
from medsegr.imaging.slicing import SliceView
from medsegr.vocabulary import segment_terminology



class ImageView(Protocol):
    """What result writing reads from a chat session: the image, its copy normalised to
    ``[0, 1]``, and slice views (:class:`medsegr.pipeline.ChatSession` is one, and so is
    :class:`medsegr.cli.remote_ask.RemoteImageView` for an answer from a remote engine)."""

    image: MedicalImage
    volume01: np.ndarray

    def view(self, axis: int, index: int) -> SliceView: ...


FILES = {
    "segmentation": "segmentation.seg.nrrd",
    "labels": "labels.nrrd",
    "answer": "answer.json",
    "overlay": "overlay.png",
}


def segment_specs(answer: Answer) -> list[SegmentSpec]:
    return [coded_segment(s.name, s.mask, s.index) for s in answer.segments]


@contextlib.contextmanager
def result_folder(out_dir: str | Path) -> Iterator[Path]:
    """Yield the staging folder for one result set; on success all files written into
    it replace their namesakes in ``out_dir`` together (:func:`atomic_files`).

    Every file of a result set (also ones other writers add) must be written here, so
    a failure part way (unwritable folder, full disk, file-size limit, a vanished
    folder) leaves ``out_dir`` exactly as it was; it is reported as
    :class:`InputError` naming ``out_dir`` and the cause.
    """
    out = Path(out_dir)
    try:
        with atomic_files(out, prefix=".medsegr-") as stage:
            yield stage
    except OSError as exc:
        cause = exc.strerror or str(exc) or type(exc).__name__
        raise InputError(f"could not write the results to {out}: {cause}") from None
    except InputError as exc:
        raise InputError(f"could not write the results to {out}: {exc}") from None


def write_result_files(folder: Path, session: ImageView, question: str, answer: Answer,
                       info: dict[str, Any]) -> dict[str, str]:
    """Write the four result files into ``folder`` (a staging folder of
    :func:`result_folder`); returns their names by key."""
    image: MedicalImage = session.image
    specs = segment_specs(answer)
    write_seg_nrrd(folder / FILES["segmentation"], specs, image)
    write_labelmap_nrrd(folder / FILES["labels"], specs, image)
    view_index = answer.slice_index if answer.slice_index is not None else \
        answer.key_slices[len(answer.key_slices) // 2]
    view = session.view(answer.axis, view_index)
    footer = "" if answer.fine_tuned else \
        "base parts, not fine-tuned: answers are not grounded, masks are not meaningful"
    render_overlay(folder / FILES["overlay"], view.extract(session.volume01),
                   [view.extract(s.mask) for s in answer.segments],
                   [s.name for s in answer.segments], [sp.color for sp in specs],
                   question, answer.text, footer)
    record = {"question": question, "image": image.source, **answer.summary(),
              "segments": [{"index": s.index, "name": s.name, "voxels": s.voxels,
                            "color": list(sp.color), "label_value": s.index + 1,
                            "terminology": segment_terminology(s.name),
                            "measured": s.measured.to_dict() if s.measured else None}
                           for s, sp in zip(answer.segments, specs)],
              "image_geometry": {"shape_zyx": list(image.shape), "spacing": list(image.spacing),
                                 "origin": list(image.origin),
                                 "direction": list(image.direction),
                                 "modality": image.modality},
              "model": info,
              "files": FILES}
    with (folder / FILES["answer"]).open("x", encoding="utf-8") as handle:
        handle.write(json.dumps(record, indent=2) + "\n")
    return dict(FILES)


def write_results(out_dir: str | Path, session: ImageView, question: str, answer: Answer,
                  info: dict[str, Any],
                  extra: Callable[[Path], dict[str, str]] | None = None) -> dict[str, Path]:
    """Write the result files into ``out_dir`` as one set; returns their paths.

    ``extra(staging_folder)`` may write more files of the set into the staging folder
    and return their names by key; they are moved in with the others.
    """
    out = Path(out_dir)
    with result_folder(out) as stage:
        names = write_result_files(stage, session, question, answer, info)
        if extra is not None:
            names.update(extra(stage))
    return {key: out / name for key, name in names.items()}


def print_answer(answer: "Answer", paths: dict[str, Path], as_json: bool,
                 time_text: str) -> None:
    """Print an answer (:class:`medsegr.answers.Answer`) and the result files written for it:
    the JSON record with ``as_json``, else the text, its segments, the files and
    ``time_text``."""
    if as_json:
        print(json.dumps({**answer.summary(), "files": {k: str(v) for k, v in paths.items()}},
                         indent=2))
        return
    print(answer.text or "(no answer text)")
    print()
    for seg in answer.segments:
        print(f"  segment {seg.index + 1}: {seg.name} ({seg.voxels} voxels)")
        if seg.measured is not None:
            print(f"    measured: {seg.measured.describe()}")
    if not answer.segments:
        print("  no segment in this answer")
    if answer.engine_words:
        changed = "; ".join(f"{model!r} -> {engine!r}" for model, engine in answer.engine_words)
        print(f"  words picked from the measurements: {changed}")
    print(f"  wrote {paths['segmentation']}, {paths['labels'].name}, "
          f"{paths['answer'].name}, {paths['overlay'].name}")
    if "dicom_seg" in paths:
        print(f"  wrote the DICOM SEG {paths['dicom_seg'].name}")
    print(f"  time: {time_text}")


def print_warnings(lines: Sequence[str]) -> None:
    """One ``medsegr: warning:`` line on stderr per message."""
    for line in lines:
        print(f"medsegr: warning: {line}", file=sys.stderr)


#: the one line a non-DICOM input gets about the DICOM SEG (the reason is in answer.json)
DICOM_SEG_NOTE = "medsegr: note: a DICOM SEG (segmentation.dcm) is written for DICOM inputs only"


def print_dicom_seg_messages(plan: Any, dicom_input: bool) -> None:
    """What the DICOM SEG ``plan`` (:class:`medsegr.io.dicom_seg.DicomSegPlan`, or None)
    tells the user on stderr: for a DICOM input, a warning for each thing that did not go
    as asked (a series that cannot be referenced, an uncoded segment); for any other
    input, one short note that there is no DICOM SEG, as expected (none with
    ``--no-dicom-seg``)."""
    if plan is None:
        return
    if dicom_input:
        print_warnings(plan.messages())
    elif not plan.declined:
        print(DICOM_SEG_NOTE, file=sys.stderr)
