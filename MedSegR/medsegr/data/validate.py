"""``medsegr data check``: every problem of a dataset folder, with file and line.

Checked, for every record of every split file (nothing stops at the first problem):

- the line: UTF-8, valid JSON (no NaN, no duplicate keys), a JSON object;
- the record format (:func:`medsegr.data.records.parse_record`): fields and types,
  modality, window, axis, question types, ``[SEG]`` markers bound to ``<p>name</p>``
  and counted against the turn's masks, mask keys known, paths relative;
- ids unique in the dataset, and no subject in two split files;
- files: inside the dataset folder (no ``..``, absolute path or symbolic link out),
  present, readable;
- the image: ``slice`` in range along ``axis`` (``null`` only for a 2-D image);
- each label map: on exactly the image's grid (size, spacing, origin, direction),
  integer-valued, holding the mask's label value; each mask bound to a ``[SEG]``
  is non-empty on the record's slice.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medsegr.data.records import (SPLIT_NAMES, DatasetError, Problem, Record, VolumeCache, iter_records,
                                  resolve_inside, split_path)
from medsegr.errors import MedSegRError
from medsegr.io.images import MedicalImage

__all__ = ["Report", "check_dataset", "grid_mismatch"]

_SPACING_RTOL = 1e-4
_ORIGIN_ATOL = 1e-3
_DIRECTION_ATOL = 1e-4


@dataclass
class Report:
    """The outcome of :func:`check_dataset`."""

    root: Path
    problems: list[Problem] = field(default_factory=list)
    records: dict[str, int] = field(default_factory=dict)
    broken_records: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def grid_mismatch(image: MedicalImage, labels: MedicalImage) -> str | None:
    """How the label map's grid differs from the image's (None when equal within
    float tolerance: spacing relative 1e-4, origin 1e-3 mm, direction 1e-4)."""
    if labels.shape != image.shape:
        return f"size {labels.shape[::-1]} differs from the image's {image.shape[::-1]} (x, y, z)"
    if not np.allclose(labels.spacing, image.spacing, rtol=_SPACING_RTOL, atol=0):
        return f"spacing {_fmt(labels.spacing)} differs from the image's {_fmt(image.spacing)}"
    scale = max(1.0, float(np.max(np.abs(image.origin))))
    if not np.allclose(labels.origin, image.origin, atol=_ORIGIN_ATOL * scale, rtol=0):
        return f"origin {_fmt(labels.origin)} differs from the image's {_fmt(image.origin)}"
    if not np.allclose(labels.direction, image.direction, atol=_DIRECTION_ATOL, rtol=0):
        return f"direction {_fmt(labels.direction)} differs from the image's {_fmt(image.direction)}"
    return None


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


class _Files:
    """Resolves and loads dataset files once, remembering why one is unusable."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cache = VolumeCache(max_items=6)
        self._paths: dict[str, tuple[Path | None, str | None]] = {}
        self._broken: dict[str, str] = {}
        self._labels: dict[str, tuple[set[int] | None, str | None]] = {}

    def path(self, rel: str) -> tuple[Path | None, str | None]:
        if rel not in self._paths:
            self._paths[rel] = resolve_inside(self.root, rel)
        return self._paths[rel]

    def load(self, rel: str) -> tuple[MedicalImage | None, str | None]:
        path, reason = self.path(rel)
        if path is None:
            return None, reason
        if rel in self._broken:
            return None, self._broken[rel]
        try:
            return self.cache.get(path), None
        except MedSegRError as error:
            self._broken[rel] = f"cannot read {rel!r}: {error}"
            return None, self._broken[rel]

    def label_values(self, rel: str, image: MedicalImage) -> tuple[set[int] | None, str | None]:
        """The label values present in a label map (None and a reason when it is not integer)."""
        if rel not in self._labels:
            values = np.unique(image.array)
            if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
                self._labels[rel] = (None, f"label map {rel!r} has non-integer values (a probability map?)")
            else:
                self._labels[rel] = ({int(v) for v in values}, None)
        return self._labels[rel]


def check_dataset(root: str | os.PathLike[str], splits: Sequence[str] | None = None, *, images: bool = True,
                  on_record: Callable[[int], None] | None = None) -> Report:
    """Check a dataset folder and return every problem found (see the module docstring).

    Args:
        root: the dataset folder.
        splits: split names to check (default: every ``*.jsonl`` in the folder).
        images: also open the image and label files (grids, labels, slices).
        on_record: called after each record (progress).
    """
    folder = Path(root)
    report = Report(root=folder)
    if not folder.is_dir():
        report.problems.append(Problem(str(folder), None, "the dataset folder does not exist"))
        return report
    try:
        files = _split_files(folder, splits)
    except DatasetError as error:
        report.problems.extend(error.problems)
        return report
    parsed: list[tuple[str, int, Record]] = []
    for name, path in files:
        count = 0
        for line, record, problems in iter_records(path):
            count += 1
            report.problems.extend(Problem(path.name, line, message) for message in problems)
            if record is not None:
                record.root = folder
                parsed.append((path.name, line, record))
        report.records[name] = count
        if count == 0:
            report.problems.append(Problem(path.name, None, "the split file holds no records"))
    _check_across(parsed, report)
    checker = _Files(folder)
    for number, (file, line, record) in enumerate(parsed, start=1):
        found = _check_record_files(record, checker, images)
        report.problems.extend(Problem(file, line, message) for message in found)
        if on_record is not None:
            on_record(number)
    report.problems.sort(key=lambda p: (p.file, p.line or 0))
    report.broken_records = len({(p.file, p.line) for p in report.problems if p.line is not None})
    return report


def _split_files(folder: Path, splits: Sequence[str] | None) -> list[tuple[str, Path]]:
    if splits:
        out = []
        missing = []
        for name in splits:
            path = split_path(folder, name)
            if path.is_file():
                out.append((name, path))
            else:
                missing.append(Problem(path.name, None, "split file not found"))
        if missing:
            raise DatasetError(missing)
        return out
    found = {p.stem: p for p in folder.glob("*.jsonl") if p.is_file()}
    if not found:
        raise DatasetError([Problem(str(folder), None, "no split files (*.jsonl) in the dataset folder")])
    order = [s for s in SPLIT_NAMES if s in found] + sorted(s for s in found if s not in SPLIT_NAMES)
    return [(name, found[name]) for name in order]


def _check_across(parsed: list[tuple[str, int, Record]], report: Report) -> None:
    """Unique ids; each subject in one split file only."""
    ids: dict[str, tuple[str, int]] = {}
    subjects: dict[str, tuple[str, int]] = {}
    reported: set[tuple[str, str]] = set()
    for file, line, record in parsed:
        if record.id in ids:
            first = ids[record.id]
            report.problems.append(Problem(file, line, f"duplicate id {record.id!r} (first in {first[0]} line {first[1]})"))
        else:
            ids[record.id] = (file, line)
        owner = subjects.setdefault(record.subject, (file, line))
        if owner[0] != file and (record.subject, file) not in reported:
            reported.add((record.subject, file))
            report.problems.append(Problem(file, line, f"subject {record.subject!r} is also in {owner[0]} "
                                           f"(line {owner[1]}): splits must be by subject"))


def _check_record_files(record: Record, files: _Files, images: bool) -> list[str]:
    problems: list[str] = []
    image_rel = record.image
    if not images:
        for rel in [image_rel, *dict.fromkeys(ref.file for ref in record.masks)]:
            reason = files.path(rel)[1]
            if reason:
                problems.append(reason)
        return problems
    image, reason = files.load(image_rel)
    if image is None:
        problems.append(f"image: {reason}")
    view = _record_view(record, image, problems) if image is not None else None
    claimed = {key for turn in record.conversation for key in turn.masks}
    for ref in record.masks:
        labels, reason = files.load(ref.file)
        if labels is None:
            problems.append(f"mask {ref.key!r}: {reason}")
            continue
        if image is None:
            continue
        mismatch = grid_mismatch(image, labels)
        if mismatch:
            problems.append(f"mask {ref.key!r}: label map {ref.file!r} is not on the image's grid: {mismatch}")
            continue
        values, reason = files.label_values(ref.file, labels)
        if values is None:
            problems.append(f"mask {ref.key!r}: {reason}")
            continue
        if ref.label not in values:
            present = sorted(v for v in values if v != 0)
            problems.append(f"mask {ref.key!r}: label {ref.label} does not occur in {ref.file!r} "
                            f"(labels there: {', '.join(map(str, present[:20])) or 'none'})")
            continue
        if view is not None and ref.key in claimed:
            if not np.any(view.extract(labels.array) == ref.label):
                problems.append(f"mask {ref.key!r} is bound to a [SEG] but is empty on the record's slice")
    return problems


def _record_view(record: Record, image: MedicalImage, problems: list[str]):  # -> SliceView | None
    from medsegr.imaging.slicing import resolve_axis, slice_view

    if record.slice is None:
        if not image.is_2d:
            problems.append(f"'slice' is null but the image is 3-D (size {image.shape[::-1]}): give axis and slice")
            return None
        return slice_view(image.shape, image.spacing, image.direction, 0, 0)
    if record.axis is None:
        problems.append("'slice' is given without 'axis'")
        return None
    axis = resolve_axis(record.axis, image.direction)
    size = image.shape[axis]
    if record.slice >= size:
        problems.append(f"slice {record.slice} is out of range along {record.axis} (0..{size - 1})")
        return None
    return slice_view(image.shape, image.spacing, image.direction, axis, record.slice)
