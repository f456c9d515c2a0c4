"""Taking 2-D slices out of a 3-D image in a standard display orientation.

Arrays are in numpy order ``(z, y, x)`` = ITK axes ``(k, j, i)``; the direction
matrix columns give each ITK axis in patient LPS coordinates. A slice is
presented to the model the way a radiologist looks at it:

- axial (normal ~ S): rows run anterior -> posterior, columns right -> left;
- coronal (normal ~ P): rows run superior -> inferior, columns right -> left;
- sagittal (normal ~ L): rows run superior -> inferior, columns anterior -> posterior.

So the same anatomy looks the same whatever the storage order (RAS NIfTI, LPS
DICOM, transposed arrays). :class:`SliceView` records the transpose and flips, and
:meth:`SliceView.to_volume` undoes them exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medsegr.errors import InputError

AXIS_NAMES = {"axial": 2, "coronal": 1, "sagittal": 0}  # -> LPS axis of the slice normal
#: desired (row direction, column direction) in LPS for each plane
_DISPLAY = {
    2: (np.array([0.0, 1.0, 0.0]), np.array([1.0, 0.0, 0.0])),   # axial: P down, L right
    1: (np.array([0.0, 0.0, -1.0]), np.array([1.0, 0.0, 0.0])),  # coronal: I down, L right
    0: (np.array([0.0, 0.0, -1.0]), np.array([0.0, 1.0, 0.0])),  # sagittal: I down, P right
}


def direction_matrix(direction: tuple[float, ...]) -> np.ndarray:
    """ITK row-major 9-tuple -> 3x3 matrix whose column c is ITK axis c in LPS."""
    return np.asarray(direction, dtype=float).reshape(3, 3)


def resolve_axis(axis: str | int, direction: tuple[float, ...]) -> int:
    """Numpy axis (0=k/z, 1=j/y, 2=i/x) for an axis given by name or index.

    Names (``axial``, ``coronal``, ``sagittal``) pick the image axis whose
    direction is closest to that plane's normal; ``k``/``j``/``i`` or ``0``/``1``/``2``
    name numpy axes directly.
    """
    if isinstance(axis, int) or (isinstance(axis, str) and axis.isdigit()):
        value = int(axis)
        if value not in (0, 1, 2):
            raise InputError(f"axis index must be 0, 1 or 2 (numpy z, y, x), got {value}")
        return value
    name = str(axis).strip().lower()
    if name in ("k", "z"):
        return 0
    if name in ("j", "y"):
        return 1
    if name in ("i", "x"):
        return 2
    if name not in AXIS_NAMES:
        raise InputError(f"unknown axis {axis!r} (use axial, coronal, sagittal, k, j, i or 0-2)")
    lps_axis = AXIS_NAMES[name]
    dmat = direction_matrix(direction)
    itk_axis = int(np.argmax(np.abs(dmat[lps_axis, :])))
    return 2 - itk_axis


@dataclass(frozen=True)
class SliceView:
    """How one slice of a volume is shown to the model.

    ``axis`` is the numpy axis sliced at ``index``; the remaining two numpy axes,
    in order, form the raw 2-D slice; ``transpose`` swaps them, then ``flip_rows`` /
    ``flip_cols`` reverse them. ``pixel_spacing`` is (row, column) spacing in mm of
    the displayed slice.
    """

    axis: int
    index: int
    transpose: bool
    flip_rows: bool
    flip_cols: bool
    pixel_spacing: tuple[float, float]

    def extract(self, volume: np.ndarray) -> np.ndarray:
        """``(z, y, x)`` volume -> displayed 2-D slice ``(rows, cols)``."""
        raw = np.take(volume, self.index, axis=self.axis)
        return self.to_display(raw)

    def to_display(self, raw: np.ndarray) -> np.ndarray:
        out = raw.T if self.transpose else raw
        if self.flip_rows:
            out = out[::-1, :]
        if self.flip_cols:
            out = out[:, ::-1]
        return np.ascontiguousarray(out)

    def from_display(self, shown: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_display` (displayed slice -> raw slice)."""
        out = shown
        if self.flip_cols:
            out = out[:, ::-1]
        if self.flip_rows:
            out = out[::-1, :]
        if self.transpose:
            out = out.T
        return np.ascontiguousarray(out)

    def to_volume(self, shown: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
        """Place a displayed 2-D mask into an all-zero volume of ``shape``."""
        vol = np.zeros(shape, dtype=shown.dtype)
        index: list[slice | int] = [slice(None)] * 3
        index[self.axis] = self.index
        vol[tuple(index)] = self.from_display(shown)
        return vol

    def display_point(self, row: float, col: float, shape: tuple[int, int, int]) -> tuple[float, float]:
        """Map a (row, col) of the raw slice to the displayed slice (for hints)."""
        raw_shape = [s for a, s in enumerate(shape) if a != self.axis]
        r, c = (col, row) if self.transpose else (row, col)
        rows, cols = (raw_shape[1], raw_shape[0]) if self.transpose else (raw_shape[0], raw_shape[1])
        if self.flip_rows:
            r = rows - 1 - r
        if self.flip_cols:
            c = cols - 1 - c
        return r, c


def slice_view(shape: tuple[int, int, int], spacing: tuple[float, float, float],
               direction: tuple[float, ...], axis: int, index: int) -> SliceView:
    """The :class:`SliceView` for slice ``index`` along numpy ``axis``."""
    if axis not in (0, 1, 2):
        raise InputError(f"axis must be 0, 1 or 2, got {axis}")
    if not 0 <= index < shape[axis]:
        raise InputError(f"slice index {index} is out of range for axis {axis} "
                         f"(0..{shape[axis] - 1})")
    dmat = direction_matrix(direction)
    normal = dmat[:, 2 - axis]
    plane = int(np.argmax(np.abs(normal)))
    want_row, want_col = _DISPLAY[plane]
    in_plane = [a for a in (0, 1, 2) if a != axis]  # numpy axes of the raw slice (rows, cols)
    vec = {a: dmat[:, 2 - a] for a in in_plane}
    # choose which raw axis becomes the displayed rows
    a0, a1 = in_plane
    keep = abs(vec[a0] @ want_row) + abs(vec[a1] @ want_col)
    swap = abs(vec[a1] @ want_row) + abs(vec[a0] @ want_col)
    transpose = swap > keep
    row_axis, col_axis = (a1, a0) if transpose else (a0, a1)
    flip_rows = bool(vec[row_axis] @ want_row < 0)
    flip_cols = bool(vec[col_axis] @ want_col < 0)
    spacing_np = (spacing[2], spacing[1], spacing[0])  # numpy order
    return SliceView(axis=axis, index=index, transpose=bool(transpose), flip_rows=flip_rows,
                     flip_cols=flip_cols,
                     pixel_spacing=(float(spacing_np[row_axis]), float(spacing_np[col_axis])))
