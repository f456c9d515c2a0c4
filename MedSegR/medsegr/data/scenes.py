"""From the masks on one displayed slice to a :class:`~medsegr.data.conversations.Scene`
and to dataset records. Shared by every builder."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medsegr.data.conversations import (TEMPLATES_ATTRIBUTE, Absence, Item, Scene, containment,
                                       make_conversation, make_heldout_conversation,
                                       make_heldout_size_conversation, measure,
                                       midline_column)
from medsegr.data.knowledge import Structure
from medsegr.data.records import MaskRef, Record, Turn

__all__ = ["MaskSpec", "SliceRef", "lesion_components", "lesion_density", "records_for_scene", "scene_from_masks"]

#: a structure smaller than this on a slice is neither asked about nor called absent
MIN_AREA_MM2 = 40.0
MIN_PIXELS = 25


@dataclass
class MaskSpec:
    """What a mask is: its knowledge-base entry, the name answers use, where it is
    stored (label map file relative to the dataset root, label value) and known facts."""

    key: str
    entry: Structure
    name: str
    file: str
    label: int
    attrs: dict[str, Any] = field(default_factory=dict)

    def ref(self) -> MaskRef:
        return MaskRef(key=self.key, file=self.file, label=self.label, name=self.name, snomed=self.entry.snomed)


@dataclass
class SliceRef:
    """Where a record's slice is: the image file, axis name and index (None for 2-D)."""

    image: str
    axis: str | None
    index: int | None
    plane: str


def lesion_components(mask: np.ndarray, pixel_spacing: tuple[float, float]) -> tuple[int, float]:
    """Number of separate lesions on a 2-D mask and the largest one's diameter (mm,
    of the circle of equal area)."""
    from scipy.ndimage import label

    labelled, count = label(mask)
    if count == 0:
        return 0, 0.0
    sizes = np.bincount(labelled.ravel())[1:] * pixel_spacing[0] * pixel_spacing[1]
    return int(count), float(2.0 * np.sqrt(sizes.max() / np.pi))


def lesion_density(intensities: np.ndarray, lesion: np.ndarray, host: np.ndarray, modality: str,
                   ring_pixels: int = 4) -> str | None:
    """``hypodense``/``hyperdense`` (MR: ``hypointense``/``hyperintense``): the lesion's
    mean intensity against the host tissue around it (a ring of ``ring_pixels`` inside
    the host, else the whole rest of the host). None when it cannot be measured or the
    two differ by less than a quarter of the surrounding tissue's spread."""
    from scipy.ndimage import binary_dilation

    lesion = lesion.astype(bool)
    rest = host.astype(bool) & ~lesion
    if not lesion.any() or np.count_nonzero(rest) < 10:
        return None
    ring = binary_dilation(lesion, iterations=ring_pixels) & rest
    around = intensities[ring] if np.count_nonzero(ring) >= 10 else intensities[rest]
    difference = float(intensities[lesion].mean()) - float(around.mean())
    if abs(difference) < 0.25 * max(float(around.std()), 1e-6):
        return None
    stem = "dense" if modality == "CT" else "intense"
    return ("hyper" if difference > 0 else "hypo") + stem


def scene_from_masks(masks: Mapping[str, np.ndarray], specs: Mapping[str, MaskSpec], pixel_spacing: tuple[float, float],
                     *, modality: str, plane: str, regions: Sequence[str], description: str,
                     sequence: str | None = None, absences: Sequence[Absence] = (),
                     lesion_hosts: Sequence[str] = (), missing_is_absent: bool = False,
                     min_area_mm2: float = MIN_AREA_MM2, intensities: np.ndarray | None = None) -> Scene:
    """The scene of one displayed slice.

    Masks smaller than ``min_area_mm2`` (or :data:`MIN_PIXELS` pixels) are left out:
    never segmented, never called absent. With ``missing_is_absent``, a structure
    whose mask is empty on this slice becomes an absence ("not in this slice").
    ``lesion_hosts`` are organ keys that may hold lesions: present ones without a
    lesion on this slice are recorded as lesion-free. A lesion spec names its host
    organ in ``attrs["host"]``; its count and size are measured on the slice, and with
    ``intensities`` (the slice's raw values, display orientation) its density too (a
    measured hypo/hyper word replaces the spec's ``density``). The midline is
    :func:`~medsegr.data.conversations.midline_column` of the structures kept.
    """
    geometry = measure(masks, pixel_spacing)
    items: dict[str, Item] = {}
    present_masks: dict[str, np.ndarray] = {}
    found_absences = list(absences)
    hosts_with_lesions: set[str] = set()  # any lesion, even one too small to ask about
    for key, spec in specs.items():
        mask = masks.get(key)
        pixels = int(np.count_nonzero(mask)) if mask is not None else 0
        area, centroid, diameter = geometry.get(key, (0.0, (0.0, 0.0), 0.0))
        if pixels and spec.entry.kind == "lesion" and spec.attrs.get("host"):
            hosts_with_lesions.add(spec.attrs["host"])
        if pixels == 0:
            if missing_is_absent and spec.entry.kind != "lesion":
                found_absences.append(Absence(spec.entry, "it is not in this slice"))
            continue
        if area < min_area_mm2 or pixels < MIN_PIXELS:
            continue
        attrs = dict(spec.attrs)
        name = spec.name
        if spec.entry.kind == "lesion":
            count, size = lesion_components(mask, pixel_spacing)
            attrs.update(count=count, size_mm=size)
            host_mask = masks.get(attrs.get("host", ""))
            if intensities is not None and host_mask is not None:
                measured = lesion_density(intensities, mask, host_mask, modality)
                if measured is not None:
                    attrs["density"] = measured
                elif str(attrs.get("density", "")).startswith(("hypo", "hyper")):
                    attrs.pop("density")  # stated but not seen on this slice
            if count > 1 and not name.endswith("s"):
                name += "s"  # "liver lesions" when the slice shows several
        items[key] = Item(key=key, entry=spec.entry, name=name, area_mm2=area, centroid=centroid,
                          diameter_mm=diameter, attrs=attrs)
        present_masks[key] = mask
    lesion_free = [h for h in lesion_hosts if h in items and h not in hosts_with_lesions]
    shape = next((tuple(int(n) for n in m.shape[:2]) for m in masks.values() if m is not None), None)
    midline = midline_column(present_masks, shape[1]) if shape is not None else None
    return Scene(modality=modality, plane=plane, regions=tuple(regions), items=items, sequence=sequence,
                 contains=containment(present_masks), absences=found_absences, lesion_free=lesion_free,
                 description=description, shape=shape, midline=midline)


def records_for_scene(scene: Scene, specs: Mapping[str, MaskSpec], where: SliceRef, *, record_id: str,
                      subject: str, source: str, modality: str, count: int, rng: random.Random,
                      windows: Sequence[str | None] = (None,), attributes: Mapping[str, Any] | None = None,
                      max_turns: int = 3, heldout_templates: bool = False) -> list[Record]:
    """Up to ``count`` records on one slice, each with its own conversation (distinct
    first questions). The record's masks are the structures present on the slice, named
    as the answers name them.

    With ``heldout_templates`` (the test split) one more record, ``RECORD_ID-t0``, asks
    a single question in the held-out wordings
    (:func:`medsegr.data.conversations.make_heldout_conversation`), and where the slice
    has a sided pair of clearly different size, ``RECORD_ID-t1`` asks a size question in
    them (:func:`~medsegr.data.conversations.make_heldout_size_conversation`); both have
    the attribute ``templates = "heldout"`` and their own random generators, so the
    other records are what they would be without them."""
    refs = [MaskRef(key=key, file=specs[key].file, label=specs[key].label, name=item.name,
                    snomed=specs[key].entry.snomed) for key, item in scene.items.items()]
    records: list[Record] = []

    def add(suffix: str, turns: list[Turn], window: str | None, extra: Mapping[str, Any]) -> None:
        # the masks the conversation asks about first, then the rest of the slice's
        used = {k for t in turns for k in t.masks}
        masks = [r for r in refs if r.key in used] + [r for r in refs if r.key not in used]
        records.append(Record(
            id=f"{record_id}-{suffix}", subject=subject, source=source, image=where.image,
            modality=modality, window=window, axis=where.axis, slice=where.index, masks=masks,
            conversation=turns, attributes={**dict(attributes or {}), **extra}))

    seen: set[str] = set()
    attempts = 0
    while len(records) < count and attempts < count * 4:
        attempts += 1
        turns: list[Turn] = make_conversation(scene, rng, max_turns=max_turns)
        if not turns or turns[0].question in seen:
            continue
        seen.add(turns[0].question)
        add(f"c{len(records)}", turns, rng.choice(list(windows)), {})
    if heldout_templates:
        turns = make_heldout_conversation(scene, random.Random(f"{record_id}|heldout-templates"))
        if turns:
            add("t0", turns, windows[0] if windows else None, {TEMPLATES_ATTRIBUTE: "heldout"})
        turns = make_heldout_size_conversation(scene, random.Random(f"{record_id}|heldout-size"))
        if turns:
            add("t1", turns, windows[0] if windows else None, {TEMPLATES_ATTRIBUTE: "heldout"})
    return records
