"""Intensity normalisation: a whole volume mapped to ``[0, 1]`` once, so every slice of
it is scaled the same way (numpy only: remote clients and the command line use it
without the model stack).

- CT: a window (level/width in HU), by name from :data:`CT_WINDOWS`;
- MR and other images: the 0.5th..99.5th percentiles of the non-zero voxels.
"""

from __future__ import annotations

import numpy as np

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
