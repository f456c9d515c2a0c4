"""Intensity normalisation and the letterbox to the encoder's square input.

Normalisation maps a whole volume to ``[0, 1]`` once (so every slice of it is
scaled the same way):

- CT: a window (level/width in HU), by name from :data:`CT_WINDOWS`;
- MR and other images: the 0.5th..99.5th percentiles of the non-zero voxels.

The letterbox resamples a 2-D slice so that its *physical* aspect ratio is kept
(anisotropic pixels become square), scales the longer side to ``S`` and pads the
bottom/right with zeros. :func:`unletterbox` maps ``S x S`` logits back to the
slice's own pixel grid exactly: crop the valid region, resize to the slice's size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from medsegr.errors import InputError

#: CT windows as (level, width) in Hounsfield units
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "soft_tissue": (40.0, 400.0),
    "abdomen": (50.0, 350.0),
    "liver": (60.0, 150.0),
    "brain": (40.0, 80.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "wide": (200.0, 2000.0),
}
DEFAULT_CT_WINDOW = "wide"


def normalise(array: np.ndarray, modality: str, window: str | None = None) -> np.ndarray:
    """Map an image to float32 ``[0, 1]`` (see the module docstring)."""
    data = np.asarray(array, dtype=np.float32)
    if modality == "CT":
        name = window or DEFAULT_CT_WINDOW
        if name not in CT_WINDOWS:
            raise InputError(f"unknown CT window {name!r} (known: {', '.join(CT_WINDOWS)})")
        level, width = CT_WINDOWS[name]
        out = (data - (level - width / 2.0)) / width
    else:
        if window is not None and window not in ("percentile", "auto"):
            raise InputError(f"a window preset applies to CT only (modality {modality})")
        values = data[data != 0] if np.any(data != 0) else data.ravel()
        low, high = np.percentile(values, [0.5, 99.5]) if values.size else (0.0, 1.0)
        if high <= low:
            high = low + 1.0
        out = (data - low) / (high - low)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class Letterbox:
    """Where a slice of ``src_shape`` sits inside the ``size x size`` encoder input."""

    src_shape: tuple[int, int]
    scaled_shape: tuple[int, int]
    size: int

    @property
    def scale(self) -> tuple[float, float]:
        """Encoder pixels per slice pixel, (rows, cols)."""
        return (self.scaled_shape[0] / self.src_shape[0], self.scaled_shape[1] / self.src_shape[1])

    def to_input_xy(self, x: float, y: float) -> tuple[float, float]:
        """Slice pixel (x=col, y=row) -> encoder input pixel (x, y), pixel-centre aligned."""
        sr, sc = self.scale
        return ((x + 0.5) * sc - 0.5, (y + 0.5) * sr - 0.5)


def letterbox_geometry(shape: tuple[int, int], pixel_spacing: tuple[float, float], size: int) -> Letterbox:
    rows, cols = shape
    height, width = rows * pixel_spacing[0], cols * pixel_spacing[1]
    unit = max(height, width) / size
    scaled = (max(1, min(size, round(height / unit))), max(1, min(size, round(width / unit))))
    return Letterbox(src_shape=(rows, cols), scaled_shape=scaled, size=size)


def letterbox(slices: np.ndarray, box: Letterbox) -> torch.Tensor:
    """``(B, rows, cols)`` in [0, 1] -> ``(B, 1, S, S)`` float32 tensor."""
    tensor = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))[:, None]
    if tuple(tensor.shape[-2:]) != box.scaled_shape:
        tensor = F.interpolate(tensor, size=box.scaled_shape, mode="bilinear", align_corners=False,
                               antialias=True)
    pad_r = box.size - box.scaled_shape[0]
    pad_c = box.size - box.scaled_shape[1]
    return F.pad(tensor, (0, pad_c, 0, pad_r))


def unletterbox(logits: torch.Tensor, box: Letterbox) -> torch.Tensor:
    """``(B, S, S)`` logits -> ``(B, rows, cols)`` logits on the slice's pixel grid."""
    valid = logits[:, : box.scaled_shape[0], : box.scaled_shape[1]].float()
    if tuple(valid.shape[-2:]) == box.src_shape:
        return valid
    return F.interpolate(valid[:, None], size=box.src_shape, mode="bilinear",
                         align_corners=False)[:, 0]
