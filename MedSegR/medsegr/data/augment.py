"""Augmented copies of real slices, for training splits only.

A displayed slice (radiological orientation) is rotated (up to 12°), scaled
(0.88-1.12) and shifted. Then, to make a slice from another scanner look familiar,
each of these is applied with probability one half: a smaller field of view (a
crop to 70-100 % of each side), a lower resolution (down-sampled by 1.3-2.5 and
up-sampled back, linear) and a Gaussian blur (0.3-1.2 pixels). Intensities change
last: for CT on the Hounsfield units, before any window is applied, a gain
(0.92-1.08), an offset (±25 HU) and noise (0-25 HU, white or slightly correlated);
for MR a gamma curve, a smooth bias field, noise and a gain. There are no
left-right flips, so the anatomy keeps its sides. Every parameter drawn is
returned (the record's ``attributes["augmented"]``).
Masks follow with nearest-neighbour sampling. The copy is stored as a 2-D image
whose geometry displays it exactly as it was shown (:func:`display_geometry`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from medsegr.io.images import MedicalImage

__all__ = ["augment_slice", "display_geometry", "display_image"]

#: LPS directions of the displayed (column, row) axes per plane
_DISPLAY_AXES = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
}


def display_geometry(plane: str) -> tuple[float, ...]:
    """The ITK direction (row-major 3x3) of a 2-D image whose array, shown with
    :mod:`medsegr.imaging.slicing`, appears unchanged in the radiological view of ``plane``:
    columns along the display's column direction, rows along its row direction."""
    col, row = (np.asarray(v) for v in _DISPLAY_AXES[plane])
    normal = np.cross(col, row)
    return tuple(float(v) for v in np.stack([col, row, normal], axis=1).ravel())


def display_image(pixels: np.ndarray, pixel_spacing: tuple[float, float], plane: str, modality: str,
                  slice_mm: float = 1.0) -> MedicalImage:
    """A 2-D :class:`MedicalImage` of a displayed slice ``(rows, cols)``."""
    return MedicalImage(array=np.ascontiguousarray(pixels, dtype=np.float32)[None],
                        spacing=(float(pixel_spacing[1]), float(pixel_spacing[0]), float(slice_mm)),
                        origin=(0.0, 0.0, 0.0), direction=display_geometry(plane), modality=modality,
                        source="<augmented>", is_2d=True)


def _smooth(shape: tuple[int, int], rng: np.random.Generator, cells: int = 3) -> np.ndarray:
    from scipy.ndimage import zoom

    coarse = rng.uniform(-1.0, 1.0, (cells + 1, cells + 1))
    field = zoom(coarse, (shape[0] / (cells + 1), shape[1] / (cells + 1)), order=1)
    return field[: shape[0], : shape[1]]


def _scanner(image: np.ndarray, masks: dict[str, np.ndarray], rng: np.random.Generator, params: dict[str, Any],
             ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Field of view, resolution and blur (each with probability 1/2), on the values
    before any window; masks follow the crop."""
    from scipy.ndimage import gaussian_filter, zoom

    rows, cols = image.shape
    if rng.random() < 0.5:
        keep = rng.uniform(0.7, 1.0, 2)
        height, width = max(8, int(round(rows * keep[0]))), max(8, int(round(cols * keep[1])))
        top, left = int(rng.integers(0, rows - height + 1)), int(rng.integers(0, cols - width + 1))
        image = image[top: top + height, left: left + width]
        masks = {k: m[top: top + height, left: left + width] for k, m in masks.items()}
        params["fov_crop_px"] = [top, top + height, left, left + width]
    if rng.random() < 0.5 and min(image.shape) >= 16:
        factor = float(rng.uniform(1.3, 2.5))
        small = zoom(image, 1.0 / factor, order=1)
        back = zoom(small, (image.shape[0] / small.shape[0], image.shape[1] / small.shape[1]), order=1)
        padded = np.pad(back, [(0, max(0, n - b)) for n, b in zip(image.shape, back.shape)], mode="edge")
        image = padded[: image.shape[0], : image.shape[1]]
        params["resolution_factor"] = round(factor, 2)
    if rng.random() < 0.5:
        sigma = float(rng.uniform(0.3, 1.2))
        image = gaussian_filter(image, sigma)
        params["blur_sigma_px"] = round(sigma, 2)
    return np.ascontiguousarray(image, dtype=np.float32), masks


def augment_slice(pixels: np.ndarray, masks: dict[str, np.ndarray], modality: str, rng: np.random.Generator,
                  ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
    """A randomly transformed copy of a displayed slice and its masks, and the
    parameters used."""
    from scipy.ndimage import affine_transform

    rows, cols = pixels.shape
    angle = math.radians(float(rng.uniform(-12, 12)))
    scale = float(rng.uniform(0.88, 1.12))
    shift = rng.uniform(-0.05, 0.05, 2) * np.array([rows, cols])
    centre = np.array([(rows - 1) / 2.0, (cols - 1) / 2.0])
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]) / scale
    offset = centre - rotation @ (centre + shift)
    background = float(np.percentile(pixels, 1))
    image = affine_transform(pixels.astype(np.float32), rotation, offset=offset, order=1, mode="constant",
                             cval=background)
    out_masks = {k: affine_transform(m.astype(np.uint8), rotation, offset=offset, order=0, mode="constant",
                                     cval=0).astype(bool) for k, m in masks.items()}
    params: dict[str, Any] = {"rotation_deg": round(math.degrees(angle), 1), "scale": round(scale, 3),
                              "shift_px": [round(float(s), 1) for s in shift]}
    image, out_masks = _scanner(image, out_masks, rng, params)
    if modality == "CT":
        gain, offset_hu = float(rng.uniform(0.92, 1.08)), float(rng.uniform(-25, 25))
        noise = float(rng.uniform(0, 25))
        grain = float(rng.choice([0.0, 0.7]))  # 0: white noise; else the noise is smoothed (correlated)
        field = rng.normal(0, 1.0, image.shape)
        if grain:
            from scipy.ndimage import gaussian_filter

            field = gaussian_filter(field, grain)
            field /= max(float(field.std()), 1e-6)
        image = image * gain + offset_hu + noise * field
        params.update(hu_gain=round(gain, 3), hu_offset=round(offset_hu, 1), noise_hu=round(noise, 1),
                      noise_grain_px=grain)
    else:
        top = float(np.percentile(image, 99.5)) or 1.0
        unit = np.clip(image / top, 0, None)
        gamma = float(rng.uniform(0.75, 1.35))
        bias = 1.0 + float(rng.uniform(0.05, 0.15)) * _smooth(image.shape, rng)
        noise = float(rng.uniform(0, 0.03))
        gain = float(rng.uniform(0.5, 2.0))
        unit = unit ** gamma * bias + rng.normal(0, noise, image.shape)
        image = np.clip(unit, 0, None) * top * gain
        params.update(gamma=round(gamma, 3), noise=round(noise, 3), gain=round(gain, 3))
    return image.astype(np.float32), out_masks, params
