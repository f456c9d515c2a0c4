"""The grounding module's input: intensity channels of a slice and its neighbours,
a modality channel and hint maps, on the letterboxed working grid.

- **CT**: the raw Hounsfield units through four fixed windows (brain, soft tissue,
  bone, lung), so that density-defined structures (bone, air, fat) keep their contrast
  whatever window the user reads the image in.
- **MR and other images**: the volume's robust percentile normalisation
  (:func:`medsegr.imaging.intensity.normalise`), the same value in every window slot.
- **Neighbours (2.5D)**: the slices ``index - 1 .. index + 1`` along the question's axis
  (clamped at the volume's ends; a 2-D image repeats its only slice).
- **Hints**: a box map (1 inside the box), and Gaussian maps of the positive and the
  negative points, in working-grid pixels.

Shapes: ``raw`` stacks are ``(B, n, S, S)`` (``n`` slices), the result ``(B, C, S, S)``
with ``C = 4 n + 1 + 3``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from medsegr.imaging.intensity import CT_WINDOWS
from medsegr.imaging.preprocess import Letterbox, letterbox

__all__ = ["AIR_HU", "GROUNDING_WINDOWS", "hint_maps", "input_channels", "letterbox_raw",
           "neighbour_indices", "raw_volume"]

#: the CT windows the grounding module sees, in channel order
GROUNDING_WINDOWS = ("brain", "soft_tissue", "bone", "lung")
#: what the letterbox's padding holds on CT (air), in Hounsfield units
AIR_HU = -1024.0
#: the width (standard deviation) of a point hint's Gaussian, in working-grid pixels
POINT_SIGMA = 4.0


def raw_volume(array: np.ndarray, modality: str, normalised: np.ndarray) -> np.ndarray:
    """What the channels are made from: Hounsfield units for CT (``array`` itself, in
    its own type: :func:`letterbox_raw` converts the few slices it takes), the
    percentile-normalised volume (``normalised``) otherwise."""
    if modality == "CT":
        return np.asarray(array)
    return np.asarray(normalised, dtype=np.float32)


def neighbour_indices(index: int, count: int, slices: int) -> list[int]:
    """The ``slices`` slice indices centred on ``index`` (clamped to ``0..count-1``)."""
    half = slices // 2
    return [min(max(index + d, 0), count - 1) for d in range(-half, slices - half)]


def letterbox_raw(stack: np.ndarray, box: Letterbox, is_ct: bool) -> torch.Tensor:
    """``(n, rows, cols)`` raw slices -> ``(n, S, S)`` on the letterboxed grid; the
    padding is air on CT and 0 otherwise."""
    offset = -AIR_HU if is_ct else 0.0
    shifted = letterbox(np.asarray(stack, dtype=np.float32) + offset, box)[:, 0]
    return shifted - offset


def input_channels(raw: torch.Tensor, is_ct: torch.Tensor, hints: torch.Tensor | None = None,
                   ) -> torch.Tensor:
    """``raw`` ``(B, n, S, S)``, ``is_ct`` ``(B,)`` bool, ``hints`` ``(B, 3, S, S)`` or None
    -> the grounding module's input ``(B, 4 n + 1 + 3, S, S)``."""
    b, n, s, _ = raw.shape
    raw = raw.float()
    windows = []
    for name in GROUNDING_WINDOWS:
        level, width = CT_WINDOWS[name]
        windows.append(((raw - (level - width / 2.0)) / width).clamp(0.0, 1.0))
    ct = torch.stack(windows, 2)                                     # (B, n, 4, S, S)
    mr = raw.clamp(0.0, 1.0)[:, :, None].expand(-1, -1, len(GROUNDING_WINDOWS), -1, -1)
    flag = is_ct.to(raw.device).view(b, 1, 1, 1, 1)
    chans = torch.where(flag, ct, mr).reshape(b, n * len(GROUNDING_WINDOWS), s, s)
    modality = is_ct.to(raw.device, raw.dtype).view(b, 1, 1, 1).expand(-1, 1, s, s)
    if hints is None:
        hints = raw.new_zeros((b, 3, s, s))
    return torch.cat([chans, modality, hints.to(raw.dtype)], 1)


def hint_maps(size: int, box: Sequence[float] | None = None,
              points: Sequence[tuple[float, float, int]] = (), sigma: float = POINT_SIGMA,
              ) -> torch.Tensor:
    """``(3, S, S)`` hint maps from a box ``(x0, y0, x1, y1)`` and points ``(x, y, label)``
    in working-grid pixels (label 1 inside the structure, 0 outside)."""
    maps = torch.zeros((3, size, size))
    if box is not None:
        x0, y0, x1, y1 = (float(v) for v in box)
        c0, c1 = sorted((x0, x1))
        r0, r1 = sorted((y0, y1))
        rows = slice(max(0, int(np.floor(r0))), min(size, int(np.ceil(r1)) + 1))
        cols = slice(max(0, int(np.floor(c0))), min(size, int(np.ceil(c1)) + 1))
        maps[0, rows, cols] = 1.0
    if points:
        axis = torch.arange(size, dtype=torch.float32)
        for x, y, label in points:
            g = torch.exp(-((axis[:, None] - float(y)) ** 2 + (axis[None, :] - float(x)) ** 2)
                          / (2 * sigma ** 2))
            channel = 1 if int(label) == 1 else 2
            maps[channel] = torch.maximum(maps[channel], g)
    return maps
