"""What the engine measures on each decoded mask: facts the answer text never invents.

For each segment of an answer, on the grid of the image asked about:

* **size**: the area on the slice (cm², slice answers) or the volume (mL, volume
  answers), from the voxel count and the voxel spacing;
* **side**: the patient side of the mask's centroid, from the image direction (LPS: +x
  is the patient's left) against the midline of the body on the same slices (the
  centroid of the voxels above air: −300 HU on CT, 10 % of the 99th percentile on MR).
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
    answer's (``volume=True``) or a slice answer's along numpy ``axis``."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != image.shape:
        raise ValueError(f"mask shape {mask.shape} is not the image's {image.shape}")
    count = int(mask.sum())
    spacing = np.asarray(image.spacing, dtype=float)  # ITK order (x, y, z)
    voxel_mm3 = float(np.prod(spacing))
    in_plane_mm2 = voxel_mm3 / float(spacing[2 - axis])
    if count == 0:
        return Measurement(mode="volume" if volume else "slice", voxels=0,
                           area_cm2=None if volume else 0.0, volume_ml=0.0 if volume else None,
                           side=None, intensity_mean=None, intensity_sd=None,
                           intensity_unit=_unit(image), components=0, extent_mm={})
    values = image.array[mask].astype(np.float64)
    _, components = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    return Measurement(
        mode="volume" if volume else "slice", voxels=count,
        area_cm2=None if volume else round(count * in_plane_mm2 / 100.0, 2),
        volume_ml=round(count * voxel_mm3 / 1000.0, 2) if volume else None,
        side=patient_side(image, mask),
        intensity_mean=round(float(values.mean()), 1), intensity_sd=round(float(values.std()), 1),
        intensity_unit=_unit(image), components=int(components),
        extent_mm=_extent(image, mask, None if volume else axis))


def patient_side(image: MedicalImage, mask: np.ndarray) -> str | None:
    """"left", "right", "midline" or "both": where ``mask`` lies against the body's
    midline on the same slices (see the module docstring); None without a patient
    orientation."""
    if image.modality == "OT":
        return None
    zs = np.nonzero(mask.any(axis=(1, 2)))[0]
    # the body on the mask's z slices (all of it when the mask spans them all)
    region = (slice(int(zs[0]), int(zs[-1]) + 1) if image.shape[0] > 1 and len(zs) < image.shape[0]
              else slice(None))
    body = _body(image.array[region], image.modality)
    if not body.any():
        return None
    offset = region.start or 0
    lps_x = _lps_x(image)
    body_x = _coordinate(lps_x, np.nonzero(body), offset)
    midline = float(body_x.mean())
    width = float(body_x.max() - body_x.min()) or 1.0
    margin = MIDLINE_MARGIN * width
    mask_x = _coordinate(lps_x, np.nonzero(mask), 0)
    left = float((mask_x > midline + margin).mean())  # LPS +x: the patient's left
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
    top = float(np.percentile(values, 99)) if values.size else 0.0
    return values > MR_BODY_FRACTION * top if top > 0 else np.zeros(values.shape, dtype=bool)


def _lps_x(image: MedicalImage) -> np.ndarray:
    """The LPS x (mm) of a voxel index ``(i, j, k)``: ``row · (i, j, k) + origin_x``."""
    matrix = image.geometry.ijk_to_lps()
    return matrix[0]


def _coordinate(row: np.ndarray, zyx: tuple[np.ndarray, ...], z_offset: int) -> np.ndarray:
    z, y, x = zyx
    return row[0] * x + row[1] * y + row[2] * (z + z_offset) + row[3]


def _extent(image: MedicalImage, mask: np.ndarray, through_axis: int | None) -> dict[str, float]:
    """Bounding box of ``mask`` along the patient axes (mm), from the 8 corners of its
    voxel-index box; without the patient axis closest to the slice normal when
    ``through_axis`` (a numpy axis) is given."""
    lo = [int(np.nonzero(mask.any(axis=tuple(b for b in range(3) if b != a)))[0][0]) for a in range(3)]
    hi = [int(np.nonzero(mask.any(axis=tuple(b for b in range(3) if b != a)))[0][-1]) for a in range(3)]
    # corners in ITK index order (i, j, k) = numpy (x, y, z), half a voxel outside the centres
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
