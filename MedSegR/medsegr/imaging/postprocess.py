"""3-D clean-up of masks decoded slice by slice."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def keep_connected(mask: np.ndarray, seeds: np.ndarray | None = None) -> np.ndarray:
    """Keep the 3-D connected components (26-connectivity) of ``mask`` that touch
    ``seeds`` (e.g. the mask on the slices the LLM looked at); with no seeded
    component, keep the largest one. Removes isolated false positives on slices far
    from the structure while keeping it whole across slices."""
    mask = mask.astype(bool, copy=False)
    if not mask.any():
        return mask
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 1:
        return mask
    keep: np.ndarray
    if seeds is not None and (seeds & mask).any():
        keep = np.unique(labels[seeds & mask])
        keep = keep[keep > 0]
    else:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        keep = np.array([int(np.argmax(sizes))])
    return np.isin(labels, keep)
