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


#: structures that are one connected object in 3-D: a volume answer keeps the largest
#: 3-D component of their mask (vocabulary keys; sided names resolve to these)
SINGLE_OBJECT_KEYS = frozenset({
    "body", "head", "brain", "cerebellum", "brainstem", "cerebral_hemisphere", "liver", "spleen",
    "heart", "lung", "kidney", "gallbladder", "pancreas", "stomach", "urinary_bladder", "aorta",
    "thalamus", "hippocampus", "prostate", "uterus",
})


def is_single_object(name: str) -> bool:
    """True when ``name`` is a structure that forms one 3-D object (e.g. the liver, the
    left kidney), False for tissues, paired or plural structures, bones and findings."""
    from medsegr import vocabulary

    entry = vocabulary.lookup(name)
    if entry is None:
        return False
    key = entry.key
    for side in ("left_", "right_"):
        if key.startswith(side):
            key = key[len(side):]
    return key in SINGLE_OBJECT_KEYS


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 3-D connected component (26-connectivity) of ``mask``."""
    return keep_connected(mask, None)


def fill_holes(mask: np.ndarray, axis: int) -> np.ndarray:
    """Fill the enclosed holes of every slice of ``mask`` along ``axis``."""
    out = np.empty_like(mask, dtype=bool)
    for i in range(mask.shape[axis]):
        sl = [slice(None)] * mask.ndim
        sl[axis] = i
        out[tuple(sl)] = ndimage.binary_fill_holes(mask[tuple(sl)])
    return out
