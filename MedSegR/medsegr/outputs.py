"""Writing an answer to disk: segmentation, label map, JSON and overlay.

All files are first written into a hidden temporary folder inside the output
folder and moved into place only when every one of them was written, so a
failure never leaves a partial set of results behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from medsegr.io.images import MedicalImage
from medsegr.io.segmentation_files import (
    SegmentSpec, default_color, write_labelmap_nrrd, write_seg_nrrd)
from medsegr.overlay import render_overlay
from medsegr.pipeline import Answer, ChatSession

FILES = {
    "segmentation": "segmentation.seg.nrrd",
    "labels": "labels.nrrd",
    "answer": "answer.json",
    "overlay": "overlay.png",
}


def segment_specs(answer: Answer) -> list[SegmentSpec]:
    return [SegmentSpec(name=s.name, mask=s.mask, color=default_color(s.index))
            for s in answer.segments]


def write_results(out_dir: str | Path, session: ChatSession, question: str, answer: Answer,
                  info: dict[str, Any]) -> dict[str, Path]:
    """Write the four result files into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".medsegr-", dir=out))
    try:
        image: MedicalImage = session.image
        specs = segment_specs(answer)
        write_seg_nrrd(tmp / FILES["segmentation"], specs, image)
        write_labelmap_nrrd(tmp / FILES["labels"], specs, image)
        view_index = answer.slice_index if answer.slice_index is not None else \
            answer.key_slices[len(answer.key_slices) // 2]
        view = session.view(answer.axis, view_index)
        footer = "" if answer.fine_tuned else \
            "base parts, not fine-tuned: answers are not grounded, masks are not meaningful"
        render_overlay(tmp / FILES["overlay"], view.extract(session.volume01),
                       [view.extract(s.mask) for s in answer.segments],
                       [s.name for s in answer.segments], [sp.color for sp in specs],
                       question, answer.text, footer)
        record = {"question": question, "image": image.source, **answer.summary(),
                  "segments": [{"index": s.index, "name": s.name, "voxels": s.voxels,
                                "color": list(sp.color), "label_value": s.index + 1}
                               for s, sp in zip(answer.segments, specs)],
                  "image_geometry": {"shape_zyx": list(image.shape), "spacing": list(image.spacing),
                                     "origin": list(image.origin),
                                     "direction": list(image.direction),
                                     "modality": image.modality},
                  "model": info,
                  "files": FILES}
        (tmp / FILES["answer"]).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        paths = {}
        for key, name in FILES.items():
            os.replace(tmp / name, out / name)
            paths[key] = out / name
        return paths
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
