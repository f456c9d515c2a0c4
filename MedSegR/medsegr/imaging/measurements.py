"""What the engine measures on each decoded mask: facts the answer text never invents.

For each segment of an answer, on the grid of the image asked about:

* **size**: the area on the slice (cm², slice answers) or the volume (mL, volume
  answers), from the voxel count and the voxel spacing;
* **side**: the patient side of the mask's centroid, from the image direction (LPS: +x
  is the patient's left) against the midline of the body on the slices the mask spans
  (the slice of a slice answer; the centroid of the voxels above air: −300 HU on CT,
  10 % of the 99th percentile on MR).
  "midline" within 5 % of the body's width of it, "both" when at least a quarter of the
  mask lies on each side beyond that margin; None for images without a patient
  orientation (modality ``OT``: pictures, plain arrays);
* **intensity**: mean and standard deviation of the voxel values inside the mask (HU on
  CT, scanner units on MR);
* **components**: the number of connected pieces (26-connected; on one slice that is
  8-connected);
* **extent**: the mask's bounding box along the patient axes (right–left,
  anterior–posterior, inferior–superior), in mm; a slice answer leaves out the axis
  through the slice.

:func:`measure_segment` returns a :class:`medsegr.answers.Measurement`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medsegr.answers import Measurement
from medsegr.io.images import MedicalImage

#: patient axes in LPS order, as named in :attr:`Measurement.extent_mm`
PATIENT_AXES = ("right-left", "anterior-posterior", "inferior-superior")
#: a centroid within this fraction of the body's width of its midline is "midline"
MIDLINE_MARGIN = 0.05
#: "both" sides when at least this share of the mask lies beyond the margin on each side
BOTH_SIDES_SHARE = 0.25
#: body voxels: above this on CT (HU), above this fraction of the 99th percentile on MR
CT_BODY_HU = -300.0
MR_BODY_FRACTION = 0.10


def measure_segment(image: MedicalImage, mask: np.ndarray, *, volume: bool, axis: int) -> Measurement:
    """The measurements of ``mask`` (bool ``(z, y, x)`` on ``image``'s grid): a volume
    answer's (``volume=True``) or a slice answer's along numpy ``axis``. The work is
    bounded by the mask's bounding box (and, for the side, the slices it spans)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != image.shape:
        raise ValueError(f"mask shape {mask.shape} is not the image's {image.shape}")
    spacing = np.asarray(image.spacing, dtype=float)  # ITK order (x, y, z)
    voxel_mm3 = float(np.prod(spacing))
    in_plane_mm2 = voxel_mm3 / float(spacing[2 - axis])
    box = bounding_box(mask)
    if box is None:
        return Measurement(mode="volume" if volume else "slice", voxels=0,
                           area_cm2=None if volume else 0.0, volume_ml=0.0 if volume else None,
                           side=None, intensity_mean=None, intensity_sd=None,
                           intensity_unit=_unit(image), components=0, extent_mm={})
    inside = mask[box]
    count = int(inside.sum())
    values = image.array[box][inside].astype(np.float64)
    _, components = ndimage.label(inside, structure=np.ones((3, 3, 3), dtype=bool))
    return Measurement(
        mode="volume" if volume else "slice", voxels=count,
        area_cm2=None if volume else round(count * in_plane_mm2 / 100.0, 2),
        volume_ml=round(count * voxel_mm3 / 1000.0, 2) if volume else None,
        side=patient_side(image, mask, box, axis if not volume else 0),
        intensity_mean=round(float(values.mean()), 1), intensity_sd=round(float(values.std()), 1),
        intensity_unit=_unit(image), components=int(components),
        extent_mm=_extent(image, box, None if volume else axis))


def bounding_box(mask: np.ndarray) -> tuple[slice, slice, slice] | None:
    """The smallest box (numpy slices) holding every voxel of ``mask``; None when empty."""
    out = []
    for a in range(3):
        hit = np.nonzero(mask.any(axis=tuple(b for b in range(3) if b != a)))[0]
        if hit.size == 0:
            return None
        out.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return out[0], out[1], out[2]


def patient_side(image: MedicalImage, mask: np.ndarray, box: tuple[slice, slice, slice] | None = None,
                 axis: int = 0) -> str | None:
    """"left", "right", "midline" or "both": where ``mask`` lies against the body's
    midline on the slices along numpy ``axis`` that the mask spans (see the module
    docstring); None without a patient orientation."""
    if image.modality == "OT":
        return None
    box = box or bounding_box(mask)
    if box is None:
        return None
    region: list[slice] = [slice(None)] * 3
    region[axis] = box[axis]
    body = _body(image.array[tuple(region)], image.modality)
    if not body.any():
        return None
    offsets = [region[a].start or 0 for a in range(3)]
    row = image.geometry.ijk_to_lps()[0]  # LPS x of a voxel index: +x is the patient's left
    body_x = _lps_x(row, np.nonzero(body), offsets)
    midline = float(body_x.mean())
    width = float(body_x.max() - body_x.min()) or 1.0
    margin = MIDLINE_MARGIN * width
    mask_x = _lps_x(row, np.nonzero(mask[box]), [box[a].start for a in range(3)])
    left = float((mask_x > midline + margin).mean())
    right = float((mask_x < midline - margin).mean())
    if left >= BOTH_SIDES_SHARE and right >= BOTH_SIDES_SHARE:
        return "both"
    centre = float(mask_x.mean()) - midline
    if abs(centre) <= margin:
        return "midline"
    return "left" if centre > 0 else "right"


def _body(values: np.ndarray, modality: str) -> np.ndarray:
    if modality == "CT":
        return values > CT_BODY_HU
    flat = values.ravel()
    sample = flat[::max(1, flat.size // 2_000_000)]  # the percentile of at most ~2 M voxels
    top = float(np.percentile(sample, 99)) if sample.size else 0.0
    return values > MR_BODY_FRACTION * top if top > 0 else np.zeros(values.shape, dtype=bool)


def _lps_x(row: np.ndarray, zyx: tuple[np.ndarray, ...], offsets: list[int]) -> np.ndarray:
    """LPS x (mm) of voxels given as numpy ``(z, y, x)`` indices plus ``offsets``."""
    z, y, x = zyx
    return row[0] * (x + offsets[2]) + row[1] * (y + offsets[1]) + row[2] * (z + offsets[0]) + row[3]


def _extent(image: MedicalImage, box: tuple[slice, slice, slice], through_axis: int | None,
            ) -> dict[str, float]:
    """The box's size along the patient axes (mm), from its 8 corners half a voxel
    outside the centres; without the patient axis closest to the slice normal when
    ``through_axis`` (a numpy axis) is given."""
    lo = [box[a].start for a in range(3)]
    hi = [box[a].stop - 1 for a in range(3)]
    # corners in ITK index order (i, j, k) = numpy (x, y, z)
    corners = np.array([[i, j, k, 1.0] for i in (lo[2] - 0.5, hi[2] + 0.5)
                        for j in (lo[1] - 0.5, hi[1] + 0.5) for k in (lo[0] - 0.5, hi[0] + 0.5)])
    lps = corners @ image.geometry.ijk_to_lps().T
    sizes = lps[:, :3].max(axis=0) - lps[:, :3].min(axis=0)
    skip = None
    if through_axis is not None:
        normal = np.reshape(image.direction, (3, 3))[:, 2 - through_axis]
        skip = int(np.argmax(np.abs(normal)))
    return {name: round(float(size), 1) for n, (name, size) in enumerate(zip(PATIENT_AXES, sizes))
            if n != skip}


def _unit(image: MedicalImage) -> str:
    return "HU" if image.modality == "CT" else ""
