"""A scalar volume node's voxels and geometry, in the engine's conventions.

Slicer stores a volume's geometry as an IJK-to-RAS matrix; the engine (like ITK and
DICOM) works in LPS with ``spacing``, ``origin`` and a direction matrix, and with
numpy arrays ``(z, y, x)`` = ``(k, j, i)``. RAS and LPS differ by the sign of the
first two coordinates, so the LPS geometry is the RAS one with its first two rows
negated. Volumes under a parent transform are described in world coordinates when
the transform is linear (what the user sees); the voxel grid itself never changes, so
masks that come back on the uploaded grid always fit the volume node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import slicer
import vtk
from medsegr.errors import InputError

#: RAS <-> LPS: negate x and y
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class VolumeGeometry:
    """What the engine needs besides the voxels: ITK/LPS geometry of a ``(z, y, x)`` grid."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]


def vtk_to_numpy_matrix(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=float)


def numpy_to_vtk_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def ijk_to_ras(volume_node: Any) -> np.ndarray:
    """The volume's own (parent transform not applied) IJK-to-RAS 4x4 matrix."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return vtk_to_numpy_matrix(matrix)


def parent_to_world(node: Any) -> np.ndarray | None:
    """The 4x4 matrix from the node's coordinates to world, or None when the node sits
    under a non-linear transform. Identity when it is not transformed."""
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        return None
    matrix = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(matrix)
    return vtk_to_numpy_matrix(matrix)


def world_to_local_points(node: Any, points_world: np.ndarray) -> np.ndarray:
    """Map world RAS points ``(n, 3)`` into the node's local RAS (any transform)."""
    points = np.atleast_2d(np.asarray(points_world, dtype=float))
    parent = node.GetParentTransformNode()
    if parent is None:
        return points.copy()
    transform = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, parent, transform)
    return np.array([transform.TransformPoint(*map(float, p)) for p in points], dtype=float)


def world_to_ijk(volume_node: Any, points_world: np.ndarray) -> np.ndarray:
    """Continuous IJK coordinates ``(n, 3)`` of world RAS points."""
    local = world_to_local_points(volume_node, points_world)
    ras_to_ijk = np.linalg.inv(ijk_to_ras(volume_node))
    homogeneous = np.c_[local, np.ones(len(local))]
    return (homogeneous @ ras_to_ijk.T)[:, :3]


def check_volume(volume_node: Any) -> tuple[int, int, int]:
    """Raise :class:`InputError` unless the node is a scalar volume the engine can
    read; returns its ``(z, y, x)`` shape."""
    if volume_node is None:
        raise InputError("select an input volume first")
    if not volume_node.IsA("vtkMRMLScalarVolumeNode"):
        raise InputError(f"{volume_node.GetName()!r} is not a scalar volume (it is a "
                         f"{volume_node.GetClassName()}); select a CT or MR volume")
    if volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputError(f"{volume_node.GetName()!r} is a label map; select the CT or MR "
                         "volume it was drawn on")
    image = volume_node.GetImageData()
    if image is None:
        raise InputError(f"volume {volume_node.GetName()!r} holds no image data")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(f"volume {volume_node.GetName()!r} has "
                         f"{image.GetNumberOfScalarComponents()} components per voxel "
                         "(colour or vector image); MedSegR needs a grey-scale CT or MR")
    x, y, z = image.GetDimensions()
    if min(x, y, z) < 1 or x * y * z == 0:
        raise InputError(f"volume {volume_node.GetName()!r} is empty")
    if x < 2 or y < 2:
        raise InputError(f"volume {volume_node.GetName()!r} is too small ({x} x {y} x {z} voxels)")
    return (z, y, x)


def volume_array(volume_node: Any) -> np.ndarray:
    """A copy of the volume's voxels as numpy ``(z, y, x)`` in their stored dtype."""
    shape = check_volume(volume_node)
    array = np.array(slicer.util.arrayFromVolume(volume_node), copy=True)
    if array.shape != shape:  # pragma: no cover - arrayFromVolume always gives (k, j, i)
        raise InputError(f"unexpected voxel array shape {array.shape} for {shape}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InputError(f"volume {volume_node.GetName()!r} contains NaN or infinite voxels")
    return array


def engine_geometry(volume_node: Any) -> VolumeGeometry:
    """ITK/LPS geometry of the volume as the user sees it (world, when its parent
    transform is linear; its own otherwise)."""
    shape = check_volume(volume_node)
    to_world = parent_to_world(volume_node)
    matrix = ijk_to_ras(volume_node) if to_world is None else to_world @ ijk_to_ras(volume_node)
    linear = matrix[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(matrix)):
        raise InputError(f"volume {volume_node.GetName()!r} has a degenerate geometry")
    direction_ras = linear / spacing
    direction_lps = RAS_TO_LPS @ direction_ras
    origin_lps = RAS_TO_LPS @ matrix[:3, 3]
    return VolumeGeometry(
        shape=shape,
        spacing=tuple(float(v) for v in spacing),  # type: ignore[arg-type]
        origin=tuple(float(v) for v in origin_lps),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in direction_lps.ravel()),
    )


def modality_hint(volume_node: Any) -> str | None:
    """``CT``/``MR`` when the node says so (DICOM attribute or a CT-like intensity
    range), else None (the engine then guesses from the intensities)."""
    for key in ("DICOM.Modality", "Modality"):
        value = volume_node.GetAttribute(key)
        if value:
            value = value.strip().upper()
            if value in ("CT", "MR"):
                return value
    return None
