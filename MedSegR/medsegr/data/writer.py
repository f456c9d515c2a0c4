"""Writing a dataset folder atomically: images, label maps, split files, info.

Builders write into a hidden staging folder beside ``--out``; only when every file
and split is complete (and subjects are checked to be disjoint between splits) is
the staging folder renamed to ``--out``. A failed or interrupted build leaves
nothing half-written.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medsegr.data.records import (FORMAT_VERSION, SPLIT_NAMES, DatasetError, Problem, Record,
                                  relative_path_problem, write_split)
from medsegr.errors import InputError
from medsegr.io.atomic import replace_folder
from medsegr.io.images import MedicalImage, atomic_output, write_image

__all__ = ["DatasetWriter", "INFO_FILE", "pack_layers"]

INFO_FILE = "dataset_info.json"
_MAX_LABELS_PER_LAYER = 255


def pack_layers(masks: Mapping[str, np.ndarray]) -> list[tuple[np.ndarray, dict[str, int]]]:
    """Pack possibly overlapping boolean masks into as few ``uint8`` label maps as
    possible: a mask goes into the first layer it does not overlap, with the next
    free label value there. Returns ``[(label map, {key: label})]``.
    """
    layers: list[tuple[np.ndarray, dict[str, int]]] = []
    for key, mask in masks.items():
        region = np.asarray(mask, dtype=bool)
        for labels, keys in layers:
            if len(keys) < _MAX_LABELS_PER_LAYER and not np.any(labels[region]):
                value = len(keys) + 1
                labels[region] = value
                keys[key] = value
                break
        else:
            labels = np.zeros(region.shape, dtype=np.uint8)
            labels[region] = 1
            layers.append((labels, {key: 1}))
    return layers


class DatasetWriter:
    """Builds one dataset folder; use as a context manager.

    ``root`` is the staging folder files are written to (paths given to the write
    methods are relative to it, as the records reference them). :meth:`commit`
    writes the split files and ``dataset_info.json`` and moves the folder to ``out``.
    """

    def __init__(self, out: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        self.out = Path(out)
        self.overwrite = overwrite
        parent = self.out.parent if str(self.out.parent) else Path(".")
        try:  # `--out datasets/default` on a fresh clone: make the parents
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create the output folder's parent {parent}: "
                             f"{exc.strerror or exc}") from None
        if self.out.exists():
            if not self.out.is_dir():
                raise InputError(f"--out {self.out} exists and is not a folder")
            if any(self.out.iterdir()) and not overwrite:
                raise InputError(f"--out {self.out} exists and is not empty (use --overwrite to replace it)")
        self.root = parent / f".{self.out.name}.partial-{secrets.token_hex(4)}"
        self.root.mkdir()
        self.splits: dict[str, list[Record]] = {}
        self._committed = False

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._committed:
            self.abort()

    def abort(self) -> None:
        """Delete the staging folder."""
        shutil.rmtree(self.root, ignore_errors=True)

    # ---- files

    def _target(self, rel: str) -> Path:
        reason = relative_path_problem(rel)
        if reason:
            raise InputError(reason)
        target = self.root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def write_image(self, rel: str, image: MedicalImage) -> str:
        """Write ``image`` (float32 with its geometry) at ``rel``; returns ``rel``."""
        write_image(self._target(rel), image)
        return rel

    def write_labels(self, rel: str, reference: MedicalImage, labels: np.ndarray) -> str:
        """Write a ``uint8`` label map on exactly ``reference``'s grid at ``rel``."""
        write_image(self._target(rel), reference.to_sitk(np.asarray(labels, dtype=np.uint8)))
        return rel

    def write_masks(self, stem: str, reference: MedicalImage, masks: Mapping[str, np.ndarray],
                    extension: str = ".nii.gz") -> dict[str, tuple[str, int]]:
        """Write overlapping masks as few label maps ``<stem>-<n><extension>``.

        Returns key -> (file, label value).
        """
        where: dict[str, tuple[str, int]] = {}
        for number, (labels, keys) in enumerate(pack_layers(masks)):
            rel = self.write_labels(f"{stem}-{number}{extension}", reference, labels)
            for key, value in keys.items():
                where[key] = (rel, value)
        return where

    def copy_file(self, source: Path, rel: str) -> str:
        """Put ``source`` at ``rel`` (a hard link when possible, else a copy)."""
        target = self._target(rel)
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
        return rel

    # ---- records

    def add(self, split: str, record: Record) -> None:
        """Queue ``record`` for ``split``."""
        self.splits.setdefault(split, []).append(record)

    def _check(self) -> None:
        problems: list[Problem] = []
        owner: dict[str, str] = {}
        ids: set[str] = set()
        for split, records in self.splits.items():
            for record in records:
                if record.id in ids:
                    problems.append(Problem(f"{split}.jsonl", None, f"duplicate id {record.id!r}"))
                ids.add(record.id)
                first = owner.setdefault(record.subject, split)
                if first != split:
                    problems.append(Problem(f"{split}.jsonl", None,
                                            f"subject {record.subject!r} is also in {first}.jsonl"))
        if not ids:
            problems.append(Problem("dataset", None, "the builder produced no records"))
        if problems:
            raise DatasetError(problems)

    def commit(self, info: Mapping[str, Any]) -> Path:
        """Write the split files and ``dataset_info.json``, then move the folder to ``out``."""
        self._check()
        counts = {split: len(self.splits[split]) for split in self._split_order()}
        subjects = {split: sorted({r.subject for r in self.splits[split]}) for split in self._split_order()}
        for split in self._split_order():
            write_split(self.root, split, self.splits[split])
        payload = {"format_version": FORMAT_VERSION, **info, "records": counts, "subjects": subjects}
        with atomic_output(self.root / INFO_FILE) as temporary:
            temporary.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        replace_folder(self.root, self.out)
        self._committed = True
        return self.out

    def _split_order(self) -> list[str]:
        known = [s for s in SPLIT_NAMES if s in self.splits]
        return known + sorted(s for s in self.splits if s not in SPLIT_NAMES)
