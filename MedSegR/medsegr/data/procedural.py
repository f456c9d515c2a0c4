"""``medsegr data build procedural``: phantom subjects with reasoning conversations.

Each subject is one phantom (:mod:`medsegr.data.phantoms`): a 2-D slice or a thin
3-D slab, written as NIfTI or NRRD with a real geometry. The phantom is drawn in
the radiological display orientation and then *stored* in a random voxel order:
axes permuted and flipped, an optional gantry-like tilt and a random origin
(SimpleITK's ``PermuteAxes``/``Flip`` keep every voxel's physical position). So
the patient's left is always the patient's left in LPS coordinates, whatever the
storage, and :mod:`medsegr.imaging.slicing` shows it on the image's right, as the
questions about sides assume. The builder checks this for every subject.

Subjects are split into train/val/test by subject, stratified by phantom kind.
Everything is a function of ``--seed`` (per-subject random streams, so the output
does not depend on the number of worker processes).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import random
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from medsegr.data import knowledge as kb
from medsegr.data.conversations import Absence
from medsegr.data.phantoms import Phantom, draw_phantom
from medsegr.data.records import Record
from medsegr.data.scenes import MaskSpec, SliceRef, records_for_scene, scene_from_masks
from medsegr.data.writer import DatasetWriter, pack_layers
from medsegr.errors import InputError
from medsegr.io.images import MedicalImage, write_image
from medsegr.imaging.slicing import resolve_axis, slice_view

__all__ = ["DEFAULT_MIX", "ProceduralOptions", "build_procedural", "make_subject", "split_plan"]

#: share of each phantom kind among the subjects
DEFAULT_MIX = {"ct-abdomen": 0.35, "ct-chest": 0.25, "mr-brain": 0.2, "mr-abdomen": 0.2}
_DESCRIPTION = {"ct-abdomen": "abdominal CT", "ct-chest": "chest CT", "mr-brain": "brain MR",
                "mr-abdomen": "abdominal MR"}
_WINDOWS = {"ct-abdomen": ("soft_tissue", "abdomen", "liver", "wide"),
            "ct-chest": ("lung", "soft_tissue", "wide", "bone"), "mr-brain": (None,), "mr-abdomen": (None,)}
_LESION_NAMES = {"liver": "liver lesion", "spleen": "splenic lesion", "right_kidney": "right kidney lesion",
                 "left_kidney": "left kidney lesion", "right_lung": "right lung nodule",
                 "left_lung": "left lung nodule", "right_cerebral_hemisphere": "white matter lesion",
                 "left_cerebral_hemisphere": "white matter lesion"}
_LESION_HOSTS = {"ct-abdomen": ("liver", "spleen", "right_kidney", "left_kidney"),
                 "mr-abdomen": ("liver", "spleen", "right_kidney", "left_kidney"),
                 "ct-chest": ("right_lung", "left_lung"),
                 "mr-brain": ("right_cerebral_hemisphere", "left_cerebral_hemisphere")}


@dataclass(frozen=True)
class ProceduralOptions:
    """Builder settings (all deterministic given ``seed``)."""

    count: int = 240
    seed: int = 0
    conversations_per_slice: int = 3
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    slab_fraction: float = 0.4
    workers: int = 0  # 0: up to 2 processes

    def __post_init__(self) -> None:
        if self.count < 1:
            raise InputError("--count must be at least 1")
        if not 1 <= self.conversations_per_slice <= 20:
            raise InputError("conversations per slice must be between 1 and 20")
        if self.val_fraction < 0 or self.test_fraction < 0 or self.val_fraction + self.test_fraction >= 1:
            raise InputError("val and test fractions must be >= 0 and sum to less than 1")


def split_plan(count: int, seed: int, val_fraction: float, test_fraction: float,
               mix: dict[str, float] | None = None) -> list[tuple[str, str]]:
    """(kind, split) per subject index: kinds in proportion to ``mix``, each kind's
    subjects split into train/val/test by the fractions (at least one test subject
    per kind when there are three or more subjects of it)."""
    shares = mix or DEFAULT_MIX
    kinds = list(shares)
    totals = np.array([shares[k] for k in kinds], dtype=float)
    counts = np.floor(totals / totals.sum() * count).astype(int)
    for index in np.argsort(-(totals / totals.sum() * count - counts))[: count - counts.sum()]:
        counts[index] += 1
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    plan: list[tuple[str, str]] = []
    for kind, n in zip(kinds, counts):
        n_test = int(round(n * test_fraction)) if n >= 3 else 0
        n_val = int(round(n * val_fraction)) if n >= 3 else 0
        if n >= 3 and test_fraction > 0:
            n_test = max(n_test, 1)
        splits = ["test"] * n_test + ["val"] * n_val + ["train"] * (n - n_test - n_val)
        plan.extend((kind, split) for split in splits)
    order = rng.permutation(len(plan))
    return [plan[i] for i in order]


# --------------------------------------------------------------------------- storage orientation


def _stored(phantom: Phantom, rng: np.random.Generator) -> tuple[sitk.Image, dict[str, Any]]:
    """The phantom as a SimpleITK image (display layout, random origin and tilt) and a
    random storage order for it (``info``, applied by :func:`_reorder`)."""
    image = sitk.GetImageFromArray(phantom.array)
    image.SetSpacing(phantom.spacing)
    order = [0, 1, 2]
    slab = phantom.array.shape[0] > 1
    if slab and rng.random() < 0.35:
        order = [int(i) for i in rng.permutation(3)]
    elif rng.random() < 0.3:
        order = [1, 0, 2]
    flips = [bool(rng.random() < 0.5), bool(rng.random() < 0.5), bool(slab and rng.random() < 0.5)]
    tilt = float(rng.uniform(-15, 15)) if slab and rng.random() < 0.25 else 0.0
    origin = tuple(float(v) for v in rng.uniform(-250, 250, 3))
    info = {"axis_order": order, "flips": flips, "tilt_deg": round(tilt, 1)}
    image.SetOrigin(origin)
    image.SetDirection(tuple(float(v) for v in _tilt_matrix(tilt).ravel()))
    return image, info


def _tilt_matrix(degrees: float) -> np.ndarray:
    a = math.radians(degrees)
    return np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])


def _reorder(image: sitk.Image, info: dict[str, Any]) -> sitk.Image:
    out = sitk.Flip(image, info["flips"], flipAboutOrigin=False)
    return sitk.PermuteAxes(out, info["axis_order"]) if info["axis_order"] != [0, 1, 2] else out


def _as_medical(image: sitk.Image, modality: str) -> MedicalImage:
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    return MedicalImage(array=array, spacing=tuple(image.GetSpacing()), origin=tuple(image.GetOrigin()),
                        direction=tuple(image.GetDirection()), modality=modality, source="<phantom>",
                        is_2d=array.shape[0] == 1)


# --------------------------------------------------------------------------- one subject


def _specs(phantom: Phantom, where: dict[str, tuple[str, int]]) -> dict[str, MaskSpec]:
    specs: dict[str, MaskSpec] = {}
    for key, (file, label) in where.items():
        if key.endswith("_lesions"):
            host = key[: -len("_lesions")]
            lesion = next(les for les in phantom.lesions if les.host == host)
            entry = kb.get("nodule" if phantom.kind == "ct-chest" else "lesion")
            specs[key] = MaskSpec(key, entry, _LESION_NAMES[host], file, label,
                                  {"host": host, "density": lesion.density})
        else:
            entry = kb.get(key)
            specs[key] = MaskSpec(key, entry, entry.name, file, label)
    return specs


def make_subject(index: int, kind: str, split: str, options: ProceduralOptions, root: Path) -> list[tuple[str, Record]]:
    """Draw, store and describe subject ``index``; write its files under ``root``.

    Returns (split, record) pairs.
    """
    rng = np.random.default_rng(np.random.SeedSequence([options.seed, 1, index]))
    text_rng = random.Random(f"{options.seed}-{index}")
    slices = 1 if rng.random() >= options.slab_fraction else int(rng.choice([3, 5]))
    phantom = draw_phantom(kind, rng, slices=slices)
    subject = f"proc-{kind}-{index:04d}"
    extension = ".nrrd" if rng.random() < 0.25 else ".nii.gz"
    base, info = _stored(phantom, rng)
    stored = _as_medical(_reorder(base, info), phantom.modality)

    (root / "images").mkdir(exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    image_rel = f"images/{subject}{extension}"
    write_image(root / image_rel, stored)
    where: dict[str, tuple[str, int]] = {}
    stored_masks: dict[str, np.ndarray] = {}
    for key, mask in phantom.masks.items():
        if not mask.any():
            continue
        mask_image = sitk.GetImageFromArray(mask.astype(np.uint8))
        mask_image.CopyInformation(base)
        stored_masks[key] = sitk.GetArrayFromImage(_reorder(mask_image, info)).astype(bool)
    for number, (labels, keys) in enumerate(pack_layers(stored_masks)):
        rel = f"labels/{subject}-{number}{extension}"
        write_image(root / rel, stored.to_sitk(labels))
        for key, value in keys.items():
            where[key] = (rel, value)
    specs = _specs(phantom, where)

    chosen = [phantom.array.shape[0] // 2]
    if slices > 1 and rng.random() < 0.5:
        chosen.append(int(rng.choice([i for i in range(slices) if i != chosen[0]])))
    out: list[tuple[str, Record]] = []
    for design_index in chosen:
        if stored.is_2d:
            axis, slice_index, view = None, None, slice_view(stored.shape, stored.spacing, stored.direction, 0, 0)
        else:
            axis = "axial"
            numpy_axis = resolve_axis(axis, stored.direction)
            point = base.TransformIndexToPhysicalPoint((0, 0, design_index))
            found = _reorder(base, info).TransformPhysicalPointToIndex(point)
            slice_index = int(found[2 - numpy_axis])
            view = slice_view(stored.shape, stored.spacing, stored.direction, numpy_axis, slice_index)
        shown = {key: view.extract(mask) for key, mask in stored_masks.items()}
        outline = "head" if "head" in phantom.masks else "body"
        if not np.array_equal(shown[outline], phantom.masks[outline][design_index]):
            raise RuntimeError(f"{subject}: the stored phantom does not display as drawn (orientation bug)")
        absences = [Absence(kb.get(k), reason) for k, reason in phantom.absent.items()]
        scene = scene_from_masks(shown, specs, view.pixel_spacing, modality=phantom.modality, plane="axial",
                                 regions=(phantom.region,), description=_DESCRIPTION[kind],
                                 sequence=phantom.sequence, absences=absences,
                                 lesion_hosts=_LESION_HOSTS[kind])
        attributes = {"generator": "procedural", **phantom.facts, "storage": info,
                      "lesions": [{"host": les.host, "density": les.density, "diameters_mm": les.diameters_mm,
                                   "value": round(les.value, 1)} for les in phantom.lesions],
                      "absent": sorted(phantom.absent),
                      "areas_cm2": {k: round(i.area_mm2 / 100.0, 2) for k, i in scene.items.items()}}
        records = records_for_scene(
            scene, specs, SliceRef(image_rel, axis, slice_index, "axial"),
            record_id=f"{subject}-s{design_index}", subject=subject, source=f"procedural-{kind}",
            modality=phantom.modality, count=options.conversations_per_slice, rng=text_rng,
            windows=_WINDOWS[kind], attributes=attributes, heldout_templates=split == "test")
        out.extend((split, r) for r in records)
    return out


def _subject_job(args: tuple[int, str, str, ProceduralOptions, str]) -> list[tuple[str, Record]]:
    index, kind, split, options, root = args
    return make_subject(index, kind, split, options, Path(root))


def build_procedural(out: str | os.PathLike[str], options: ProceduralOptions, *, overwrite: bool = False,
                     writer: DatasetWriter | None = None, progress: bool = False) -> Path | None:
    """Build ``options.count`` phantom subjects into the dataset folder ``out``.

    With ``writer`` (another builder's), records are added to it and nothing is
    committed here (returns None).
    """
    plan = split_plan(options.count, options.seed, options.val_fraction, options.test_fraction)
    own = writer is None
    target = writer or DatasetWriter(out, overwrite=overwrite)
    try:
        jobs = [(i, kind, split, options, str(target.root)) for i, (kind, split) in enumerate(plan)]
        workers = options.workers or min(2, os.cpu_count() or 1)
        results = _run(jobs, workers, progress)
        for pairs in results:
            for split, record in pairs:
                target.add(split, record)
        if not own:
            return None
        info = {"builder": "procedural", "seed": options.seed, "count": options.count,
                "kinds": sorted(set(k for k, _ in plan)),
                "split": "by subject (one phantom per subject), stratified by kind"}
        return target.commit(info)
    finally:
        if own:
            target.__exit__(None, None, None)


def _run(jobs: list[tuple[int, str, str, ProceduralOptions, str]], workers: int, progress: bool) -> list[list[tuple[str, Record]]]:
    if workers <= 1 or len(jobs) < 4:
        iterator = map(_subject_job, jobs)
        return list(_progress(iterator, len(jobs), progress))
    # a fresh server process forks the workers: forking this process could copy locks held
    # by SimpleITK's or torch's thread pools into the children and hang them
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method)) as pool:
        return list(_progress(pool.map(_subject_job, jobs, chunksize=4), len(jobs), progress))


def _progress(iterator: Any, total: int, enabled: bool) -> Any:
    if not enabled:
        return iterator
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is an engine dependency
        return iterator
    return tqdm(iterator, total=total, desc="phantoms", unit="subject")

