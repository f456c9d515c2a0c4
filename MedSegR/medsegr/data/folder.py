"""``medsegr data build folder``: a dataset from a user's folder of labelled images.

Recognised layouts (checked in this order):

1. **MSD / nnU-Net** (``dataset.json`` with ``labels``): images in ``imagesTr/``,
   label maps in ``labelsTr/``. MSD and nnU-Net v1 list cases under ``training``
   and name labels ``{"1": "liver"}``; nnU-Net v2 names them ``{"liver": 1}`` (or
   region lists ``{"tumour": [1, 2]}``) and stores channel ``c`` of case ``x`` as
   ``imagesTr/x_000c<file_ending>``. ``modality``/``channel_names`` give the modality.
   Multi-channel (4-D) images: channel ``--channel`` is used.
2. **TotalSegmentator**: one folder per subject holding an image (``ct.nii.gz``,
   ``mri.nii.gz`` or a single image file) and ``segmentations/<structure>.nii.gz``
   binary masks, the file names being the structure names.
3. **A label table** (``--label-table FILE`` or ``labels.csv``/``labels.json`` in the
   folder, see :mod:`medsegr.data.labeltables`) with images in ``images/`` (or
   ``imagesTr/``) and label maps of the same file names in ``labels/`` (or ``labelsTr/``).

Each label name is matched to the knowledge base (:func:`medsegr.data.knowledge.match_structure`:
case, ``_``/``-``, plural, synonyms, sides); an unknown name is still used, with
explicit questions only. Every label map must lie on its image's grid (checked
with float tolerance); the builder then writes the masks as label maps on the
image's exact grid, so the output passes ``medsegr data check``. A problem in
any case stops the build with the list of all problems; nothing is written.

Splits are by case (subject), with ``--val``/``--test`` fractions.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medsegr.data import knowledge as kb
from medsegr.data.conversations import Absence
from medsegr.data.labeltables import LabelEntry, labels_from_mapping, read_label_table
from medsegr.data.records import DatasetError, Problem, Record, SnomedCode
from medsegr.data.scenes import MaskSpec, SliceRef, records_for_scene, scene_from_masks
from medsegr.data.validate import grid_mismatch
from medsegr.data.writer import DatasetWriter
from medsegr.errors import InputError
from medsegr.io.images import READABLE_EXTENSIONS, MedicalImage, file_extension, load_image
from medsegr.imaging.slicing import resolve_axis, slice_view

__all__ = ["Case", "FolderOptions", "build_folder", "discover"]

_MR_CHANNEL_WORDS = ("mr", "mri", "t1", "t2", "flair", "adc", "dwi", "pd", "t1w", "t2w", "t1gd", "t1ce", "swi")
_IMAGE_NAMES = ("ct", "mri", "mr", "image", "img")


@dataclass(frozen=True)
class FolderOptions:
    """Builder settings."""

    seed: int = 0
    label_table: str | None = None
    axes: tuple[str, ...] = ("axial", "coronal", "sagittal")
    slices: int = 6
    max_cases: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    channel: int = 0
    conversations_per_slice: int = 3

    def __post_init__(self) -> None:
        bad = [a for a in self.axes if a not in ("axial", "coronal", "sagittal")]
        if bad:
            raise InputError(f"unknown plane(s) {', '.join(bad)} in --axes (axial, coronal, sagittal)")
        if not 1 <= self.slices <= 200:
            raise InputError("--slices must be between 1 and 200")
        if self.max_cases < 0 or self.channel < 0:
            raise InputError("--max-cases and --channel must be >= 0")
        if self.val_fraction < 0 or self.test_fraction < 0 or self.val_fraction + self.test_fraction >= 1:
            raise InputError("--val and --test must be >= 0 and sum to less than 1")
        if not 1 <= self.conversations_per_slice <= 20:
            raise InputError("--conversations must be between 1 and 20")


@dataclass
class Case:
    """One subject: an image and its label sources.

    ``label_files`` pairs each label file with the entries it holds; a binary
    per-structure file (TotalSegmentator) has one entry with values ``(1,)`` meaning
    "non-zero".
    """

    subject: str
    image: Path
    label_files: list[tuple[Path, list[LabelEntry]]]
    binary: bool = False
    modality: str | None = None
    channel: int | None = None


@dataclass
class Layout:
    """What :func:`discover` found."""

    name: str
    cases: list[Case]
    notes: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- discovery


def _is_image(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and file_extension(path) in READABLE_EXTENSIONS


def _stem(path: Path) -> str:
    return path.name[: len(path.name) - len(file_extension(path))] if file_extension(path) else path.name


def _modality_word(text: str) -> str | None:
    word = text.strip().lower()
    if word in ("ct", "computed tomography"):
        return "CT"
    if word in _MR_CHANNEL_WORDS or word.startswith(("mr", "t1", "t2")):
        return "MR"
    return None


def discover(source: str | os.PathLike[str], options: FolderOptions) -> Layout:
    """Find the layout and cases of ``source`` (see the module docstring)."""
    root = Path(source)
    if not root.is_dir():
        raise InputError(f"source folder does not exist: {root}")
    if (root / "dataset.json").is_file():
        return _decathlon(root, options)
    if options.label_table is None and any((d / "segmentations").is_dir() for d in _subdirs(root)):
        return _totalsegmentator(root)
    table = Path(options.label_table) if options.label_table else next(
        (root / n for n in ("labels.csv", "labels.json", "labels.tsv", "labels.ctbl") if (root / n).is_file()), None)
    if table is None:
        raise InputError(f"no known layout in {root}: expected dataset.json (MSD / nnU-Net), subject folders with "
                         "segmentations/ (TotalSegmentator), or a label table (--label-table or labels.csv)")
    return _table_layout(root, read_label_table(table), table)


def _subdirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _decathlon(root: Path, options: FolderOptions) -> Layout:
    try:
        meta = json.loads((root / "dataset.json").read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"cannot read {root / 'dataset.json'}: {error}") from None
    if not isinstance(meta, dict) or "labels" not in meta:
        raise InputError(f"{root / 'dataset.json'} has no 'labels'")
    entries = labels_from_mapping(meta["labels"], "dataset.json")
    channels = meta.get("channel_names") or meta.get("modality") or {}
    modality = None
    if isinstance(channels, dict):
        name = channels.get(str(options.channel))
        modality = _modality_word(str(name)) if name is not None else None
    ending = str(meta.get("file_ending", ".nii.gz"))
    cases: list[Case] = []
    if isinstance(meta.get("training"), list) and meta["training"]:
        for item in meta["training"]:
            if not isinstance(item, dict) or "image" not in item or "label" not in item:
                raise InputError("dataset.json: every 'training' item needs 'image' and 'label'")
            image, label = root / str(item["image"]), root / str(item["label"])
            if not image.exists() and (root / "imagesTr").is_dir():  # nnU-Net v1: channel files
                candidate = root / "imagesTr" / f"{_stem(image)}_{options.channel:04d}{file_extension(image)}"
                image = candidate if candidate.exists() else image
            cases.append(Case(_stem(label), image, [(label, entries)], modality=modality, channel=options.channel))
        name = "msd"
    else:
        labels_dir = root / "labelsTr"
        if not labels_dir.is_dir():
            raise InputError(f"{root}: dataset.json lists no 'training' cases and there is no labelsTr/ folder")
        for label in sorted(p for p in labels_dir.iterdir() if p.name.endswith(ending) and not p.name.startswith(".")):
            case = label.name[: -len(ending)]
            image = root / "imagesTr" / f"{case}_{options.channel:04d}{ending}"
            if not image.exists():
                image = root / "imagesTr" / label.name
            cases.append(Case(case, image, [(label, entries)], modality=modality))
        name = "nnunet-v2"
    if not cases:
        raise InputError(f"{root}: no labelled training cases found")
    return Layout(name, cases, {"labels": [e.name for e in entries], "modality": modality})


def _totalsegmentator(root: Path) -> Layout:
    cases: list[Case] = []
    for folder in _subdirs(root):
        seg = folder / "segmentations"
        if not seg.is_dir():
            continue
        files = sorted(p for p in seg.iterdir() if _is_image(p))
        images = [p for p in folder.iterdir() if _is_image(p)]
        preferred = [p for p in images if _stem(p).lower() in _IMAGE_NAMES]
        if len(preferred) == 1:
            image = preferred[0]
        elif len(images) == 1:
            image = images[0]
        else:
            raise InputError(f"{folder}: expected one image file (ct.nii.gz, mri.nii.gz, ...) beside segmentations/")
        if not files:
            raise InputError(f"{seg} holds no mask files")
        cases.append(Case(folder.name, image, [(f, [LabelEntry(_stem(f), (1,))]) for f in files], binary=True))
    if not cases:
        raise InputError(f"{root}: no subject folder with segmentations/")
    return Layout("totalsegmentator", cases)


def _table_layout(root: Path, entries: list[LabelEntry], table: Path) -> Layout:
    images_dir = next((root / n for n in ("images", "imagesTr") if (root / n).is_dir()), None)
    labels_dir = next((root / n for n in ("labels", "labelsTr", "masks") if (root / n).is_dir()), None)
    if images_dir is None or labels_dir is None:
        raise InputError(f"{root}: with a label table, images go in images/ and label maps in labels/")
    images = {_stem(p): p for p in images_dir.iterdir() if _is_image(p)}
    cases = []
    problems = []
    for label in sorted(p for p in labels_dir.iterdir() if _is_image(p)):
        stem = _stem(label)
        image = images.get(stem) or images.get(f"{stem}_0000")
        if image is None:
            problems.append(Problem(str(label.relative_to(root)), None, f"no image named {stem} in {images_dir.name}/"))
            continue
        cases.append(Case(stem, image, [(label, entries)]))
    if problems:
        raise DatasetError(problems)
    if not cases:
        raise InputError(f"{labels_dir}: no label maps found")
    return Layout("label-table", cases, {"label_table": table.name, "labels": [e.name for e in entries]})


# --------------------------------------------------------------------------- loading one case


def _load_case_image(case: Case, channel: int) -> tuple[MedicalImage, bool]:
    """The case's image and whether it came out of a multi-channel file."""
    try:
        return load_image(case.image, modality=case.modality), False
    except InputError as error:
        if "4-D" not in str(error) and "vector images" not in str(error):
            raise
        return _channel_of(case.image, channel, case.modality), True


def _channel_of(path: Path, channel: int, modality: str | None) -> MedicalImage:
    """Channel ``channel`` of a 4-D (x, y, z, c) image."""
    import SimpleITK as sitk

    from medsegr.io.images import itk_error_message

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputError(f"could not read image {path}: {itk_error_message(error)}") from None
    if image.GetDimension() == 4:
        size = list(image.GetSize())
        if channel >= size[3]:
            raise InputError(f"{path} has {size[3]} channels; --channel {channel} does not exist")
        image = sitk.Extract(image, size[:3] + [0], [0, 0, 0, channel])
    elif image.GetNumberOfComponentsPerPixel() > 1:
        if channel >= image.GetNumberOfComponentsPerPixel():
            raise InputError(f"{path} has {image.GetNumberOfComponentsPerPixel()} channels; "
                             f"--channel {channel} does not exist")
        image = sitk.VectorIndexSelectionCast(image, channel, sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    return MedicalImage(array=array, spacing=tuple(image.GetSpacing()), origin=tuple(image.GetOrigin()),
                        direction=tuple(image.GetDirection()), modality=modality or "OT", source=str(path),
                        is_2d=array.shape[0] == 1)


@dataclass
class _Structure:
    key: str
    entry: kb.Structure
    name: str
    mask: np.ndarray


def _case_structures(case: Case, image: MedicalImage) -> tuple[list[_Structure], list[kb.Structure], list[str]]:
    """The non-empty structures of a case, the known ones the table names but this
    case does not contain, and the problems of its label files."""
    problems: list[str] = []
    structures: list[_Structure] = []
    empty: list[kb.Structure] = []
    keys: set[str] = set()
    for path, entries in case.label_files:
        try:
            labels = load_image(path)
        except InputError as error:
            problems.append(f"label map {path.name}: {error}")
            continue
        mismatch = grid_mismatch(image, labels)
        if mismatch:
            problems.append(f"label map {path.name} is not on the image's grid: {mismatch}")
            continue
        values = labels.array
        for entry in entries:
            mask = values > 0 if case.binary else np.isin(values, entry.values)
            structure = kb.match_structure(entry.name)
            if not mask.any():
                if structure.known and structure.kind != "lesion":
                    empty.append(structure)
                continue
            key = _unique_key(structure.key, keys)
            name = structure.name
            if entry.snomed:
                structure = dataclasses.replace(structure, snomed=SnomedCode(entry.snomed, entry.name))
            structures.append(_Structure(key, structure, name, mask))
    present = {s.entry.key for s in structures}
    return structures, [e for e in empty if e.key not in present], problems


def _unique_key(key: str, used: set[str]) -> str:
    base = re.sub(r"[^a-z0-9_]+", "_", key.lower()).strip("_") or "structure"
    candidate, number = base, 2
    while candidate in used:
        candidate, number = f"{base}_{number}", number + 1
    used.add(candidate)
    return candidate


def _hosts(structures: list[_Structure]) -> dict[str, str]:
    """lesion key -> key of the organ holding most of it (at least half)."""
    out = {}
    for lesion in (s for s in structures if s.entry.kind == "lesion"):
        size = int(np.count_nonzero(lesion.mask))
        best, overlap = None, 0
        for organ in (s for s in structures if s.entry.kind != "lesion"):
            shared = int(np.count_nonzero(organ.mask & lesion.mask))
            if shared > overlap:
                best, overlap = organ.key, shared
        if best is not None and overlap >= 0.5 * size:
            out[lesion.key] = best
    return out


def _regions(structures: list[_Structure]) -> tuple[str, ...]:
    found: set[str] = set()
    for s in structures:
        found.update(s.entry.regions)
    return tuple(sorted(found))


# --------------------------------------------------------------------------- building


def _split_of(cases: list[Case], options: FolderOptions) -> dict[str, str]:
    rng = random.Random(f"folder-split-{options.seed}")
    order = [c.subject for c in cases]
    rng.shuffle(order)
    n = len(order)
    n_test = int(round(n * options.test_fraction))
    n_val = int(round(n * options.val_fraction))
    if n >= 3 and options.test_fraction > 0:
        n_test = max(1, n_test)
    if n >= 3 and options.val_fraction > 0:
        n_val = max(1, n_val)
    if n_test + n_val >= n:
        n_test, n_val = (1, 0) if n > 1 and options.test_fraction > 0 else (0, 0)
    out = {}
    for index, subject in enumerate(order):
        out[subject] = "test" if index < n_test else "val" if index < n_test + n_val else "train"
    return out


def _planes(image: MedicalImage, anchor: np.ndarray, options: FolderOptions) -> list[tuple[str, int | None]]:
    if image.is_2d:
        return [("axial", None)]
    out: list[tuple[str, int | None]] = []
    for plane in options.axes:
        axis = resolve_axis(plane, image.direction)
        areas = anchor.sum(axis=tuple(a for a in range(3) if a != axis))
        usable = np.nonzero(areas >= 0.1 * areas.max())[0] if areas.max() > 0 else np.array([], int)
        if usable.size == 0:
            continue
        picks = sorted({int(round(v)) for v in np.linspace(usable[0], usable[-1], options.slices + 2)[1:-1]}) \
            if usable.size > options.slices else [int(v) for v in usable]
        out.extend((plane, index) for index in picks)
    return out


def _case_records(case: Case, split: str, writer: DatasetWriter, options: FolderOptions,
                  layout: str) -> tuple[list[tuple[str, Record]], list[str]]:
    image, extracted = _load_case_image(case, options.channel)
    structures, empty, problems = _case_structures(case, image)
    if problems:
        return [], problems
    if not structures:
        return [], ["no labelled structure in any label map of this case"]
    subject = re.sub(r"[^A-Za-z0-9_.-]+", "_", case.subject)
    extension = file_extension(case.image)
    if extension in (".nii", ".nii.gz", ".nrrd", ".mha") and not extracted:
        image_rel = writer.copy_file(case.image, f"images/{subject}{extension}")
    else:
        image_rel = writer.write_image(f"images/{subject}.nii.gz", image)
    where = writer.write_masks(f"labels/{subject}", image, {s.key: s.mask for s in structures})
    hosts = _hosts(structures)
    specs = {s.key: MaskSpec(s.key, s.entry, s.name, where[s.key][0], where[s.key][1],
                             {"host": hosts[s.key]} if s.key in hosts else {}) for s in structures}
    anchor = np.zeros(image.shape, dtype=bool)
    for s in structures:
        anchor |= s.mask
    regions = _regions(structures)
    description = {"CT": "CT image", "MR": "MR image"}.get(image.modality, "image")
    text_rng = random.Random(f"{options.seed}-{subject}")
    lesion_hosts = sorted(set(hosts.values()))
    out: list[tuple[str, Record]] = []
    for plane, index in _planes(image, anchor, options):
        if index is None:
            view = slice_view(image.shape, image.spacing, image.direction, 0, 0)
            where_slice = SliceRef(image_rel, None, None, plane)
            record_id = subject
        else:
            view = slice_view(image.shape, image.spacing, image.direction, resolve_axis(plane, image.direction), index)
            where_slice = SliceRef(image_rel, plane, index, plane)
            record_id = f"{subject}-{plane[:3]}-{index:04d}"
        shown = {s.key: view.extract(s.mask) for s in structures}
        scene = scene_from_masks(shown, specs, view.pixel_spacing, modality=image.modality, plane=plane,
                                 regions=regions, description=description, missing_is_absent=True,
                                 lesion_hosts=lesion_hosts,
                                 absences=[Absence(e, "it is not in this scan") for e in empty])
        if not scene.items:
            continue
        records = records_for_scene(scene, specs, where_slice, record_id=record_id, subject=subject,
                                    source=f"folder-{layout}", modality=image.modality,
                                    count=options.conversations_per_slice, rng=text_rng,
                                    attributes={"generator": "folder", "layout": layout, "plane": plane,
                                                "case": case.subject},
                                    heldout_templates=split == "test")
        out.extend((split, r) for r in records)
    return out, []


def build_folder(source: str | os.PathLike[str], out: str | os.PathLike[str], options: FolderOptions, *,
                 overwrite: bool = False, progress: bool = False) -> Path:
    """Build a dataset from the folder ``source`` into ``out`` (see the module docstring)."""
    layout = discover(source, options)
    cases = layout.cases[: options.max_cases] if options.max_cases else layout.cases
    missing = [Problem(str(c.image), None, "image file not found") for c in cases if not c.image.exists()]
    missing += [Problem(str(p), None, "label file not found") for c in cases for p, _ in c.label_files if not p.exists()]
    if missing:
        raise DatasetError(missing)
    splits = _split_of(cases, options)
    with DatasetWriter(out, overwrite=overwrite) as writer:
        problems: list[Problem] = []
        for number, case in enumerate(cases, start=1):
            if progress:
                print(f"folder: case {number}/{len(cases)} {case.subject}", flush=True)
            try:
                records, found = _case_records(case, splits[case.subject], writer, options, layout.name)
            except InputError as error:
                records, found = [], [str(error)]
            problems.extend(Problem(case.subject, None, message) for message in found)
            for split, record in records:
                writer.add(split, record)
        if problems:
            raise DatasetError(problems)
        info = {"builder": "folder", "layout": layout.name, "source": str(Path(source).resolve()),
                "seed": options.seed, "cases": len(cases), **layout.notes,
                "split": "by case (subject)"}
        return writer.commit(info)

