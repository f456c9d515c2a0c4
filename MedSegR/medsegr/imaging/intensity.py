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


#: voxels mapped at once (bounds the float64 temporaries of the mapping)
_CHUNK = 1 << 18


def normalise(array: np.ndarray, modality: str, window: str | None = None) -> np.ndarray:
    """Map an image to float32 ``[0, 1]`` (see the module docstring).

    Memory: besides the result (one float32 copy of the volume) only chunk-sized
    temporaries; the percentiles are taken in place in the result's buffer, which is
    then overwritten chunk by chunk. The values are those of the plain numpy formula
    ``clip((data - low) / (high - low), 0, 1)`` on the float32 data, bit for bit.
    """
    flat = _flat_view(array)
    if modality == "CT":
        name = window or DEFAULT_CT_WINDOW
        if name not in CT_WINDOWS:
            raise InputError(f"unknown CT window {name!r} (known: {', '.join(CT_WINDOWS)})")
        level, width = CT_WINDOWS[name]
        low: float | np.floating = level - width / 2.0
        span: float | np.floating = width
        out = np.empty(flat.size, dtype=np.float32)
    else:
        if window is not None and window not in ("percentile", "auto"):
            raise InputError(f"a window preset applies to CT only (modality {modality})")
        out = np.empty(flat.size, dtype=np.float32)
        low, high = _nonzero_percentiles(flat, out)
        if high <= low:
            high = low + 1.0
        span = high - low
    # the formula's own type: float32 for a Python-float window, float64 for numpy
    # percentiles; computed in one chunk-sized buffer, or in ``out`` when float32
    kind = np.result_type(np.float32, low, span)
    buffer = None if kind == np.float32 else np.empty(min(_CHUNK, flat.size), dtype=kind)
    for start in range(0, flat.size, _CHUNK):
        part = np.asarray(flat[start:start + _CHUNK], dtype=np.float32)
        target = out[start:start + part.size]
        work = target if buffer is None else buffer[:part.size]
        np.subtract(part, low, out=work)
        np.divide(work, span, out=work)
        np.clip(work, 0.0, 1.0, out=work)
        if buffer is not None:
            target[...] = work
    return out.reshape(np.shape(array))


def _flat_view(array: np.ndarray) -> np.ndarray:
    """``array`` as one flat axis: a view when it is C-contiguous, else a float32 copy."""
    data = np.asarray(array)
    if not data.flags.c_contiguous:
        data = np.ascontiguousarray(data, dtype=np.float32)
    return data.reshape(-1)


def _nonzero_percentiles(flat: np.ndarray, scratch: np.ndarray,
                         ) -> tuple[float | np.floating, float | np.floating]:
    """The 0.5th and 99.5th percentiles of the non-zero voxels of ``flat`` (of all of
    them when none is non-zero; 0 and 1 for no voxels), gathered as float32 into
    ``scratch`` (as large as ``flat``) and selected there in place."""
    if flat.size == 0:
        return 0.0, 1.0
    count = 0
    for start in range(0, flat.size, _CHUNK):
        part = np.asarray(flat[start:start + _CHUNK], dtype=np.float32)
        kept = part[part != 0]
        scratch[count:count + kept.size] = kept
        count += kept.size
    if count == 0:  # all zero: the percentiles of the zeros
        scratch[:] = 0.0
        count = flat.size
    low, high = np.percentile(scratch[:count], [0.5, 99.5], overwrite_input=True)
    return low, high
