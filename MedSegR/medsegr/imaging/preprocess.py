"""The letterbox to the encoder's square input (and, re-exported from
:mod:`medsegr.imaging.intensity`, the intensity normalisation before it).

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

from medsegr.imaging.intensity import CT_WINDOWS, DEFAULT_CT_WINDOW, normalise

__all__ = ["CT_WINDOWS", "DEFAULT_CT_WINDOW", "Letterbox", "letterbox", "letterbox_geometry",
           "normalise", "unletterbox"]


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
