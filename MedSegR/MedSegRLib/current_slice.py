"""Which voxel slice of a volume a slice view shows, and hints from markups.

A slice view shows a plane: its slice node's ``XYToRAS`` maps view pixels (z = 0) onto
that plane in world RAS. The plane's point under the view centre, mapped through the
volume's ``RASToIJK``, gives continuous IJK coordinates; the slice axis is the IJK
axis whose direction is closest to the plane normal (argmax |axis direction . normal|),
and the slice index is the rounded coordinate along it. Oblique views therefore
select the nearest voxel-aligned slice, and say how oblique they are. A RAS offset is
never used as an index.

Axes are reported as numpy axes of the ``(z, y, x)`` array: 0 = k, 1 = j, 2 = i, as
the engine expects. Hints use the engine's in-plane order (:class:`medsegr.answers.Hints`):
slicing numpy axis 0 gives ``(i, j)``, axis 1 ``(i, k)``, axis 2 ``(j, k)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from medsegr.answers import Hints
from medsegr.errors import InputError

from MedSegRLib.volume_geometry import RAS_TO_LPS, check_volume, ijk_to_ras, vtk_to_numpy_matrix, world_to_ijk, world_to_local_points

#: a plane this close (degrees) to a voxel axis counts as aligned
ALIGNED_TOLERANCE_DEG = 0.5
#: the in-plane IJK axes (as indices into (i, j, k)) for each sliced numpy axis
IN_PLANE_IJK = {0: (0, 1), 1: (0, 2), 2: (1, 2)}
#: the standard slice views, in the order they are offered
VIEW_NAMES = ("Red", "Yellow", "Green")


@dataclass(frozen=True)
class SliceSelection:
    """One voxel slice of a volume, as the engine addresses it."""

    axis: int  # numpy axis: 0 = k, 1 = j, 2 = i
    index: int
    view_name: str
    plane: str  # "axial", "coronal" or "sagittal": the anatomical plane closest to the slice
    obliquity_deg: float  # angle between the view's plane and the voxel slice

    @property
    def oblique(self) -> bool:
        return self.obliquity_deg > ALIGNED_TOLERANCE_DEG

    def describe(self) -> str:
        text = f"{self.plane} slice {self.index} ({'kji'[self.axis]} axis, {self.view_name} view)"
        if self.oblique:
            text += f"; the view is oblique by {self.obliquity_deg:.1f} degrees, the nearest voxel slice is used"
        return text


def slice_node_by_view(scene: Any, view_name: str) -> Any:
    """The slice node of a standard view ("Red", "Yellow", "Green")."""
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLSliceNode")
        if node.GetLayoutName() == view_name:
            return node
    raise InputError(f"there is no {view_name} slice view in this layout")


def view_background_volume(scene: Any, view_name: str = "Red") -> Any | None:
    """The volume shown as background in a slice view, or None."""
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        if composite.GetLayoutName() == view_name:
            volume_id = composite.GetBackgroundVolumeID()
            return scene.GetNodeByID(volume_id) if volume_id else None
    return None


def hovered_slice_node(scene: Any) -> Any | None:
    """The slice node of the view the mouse is (or last was) over, from the crosshair
    node; None when the cursor is in no slice view."""
    crosshair = scene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
    if crosshair is None:
        return None
    xyz = [0.0, 0.0, 0.0]
    return crosshair.GetCursorPositionXYZ(xyz)


def _plane_name(direction_ras: np.ndarray) -> str:
    """Anatomical plane whose normal is closest to a RAS direction."""
    lps_axis = int(np.argmax(np.abs(RAS_TO_LPS @ direction_ras)))
    return ("sagittal", "coronal", "axial")[lps_axis]


def slice_selection(volume_node: Any, slice_node: Any) -> SliceSelection:
    """The voxel slice of ``volume_node`` shown by ``slice_node``."""
    shape = check_volume(volume_node)
    if slice_node is None:
        raise InputError("no slice view is selected")
    xy_to_ras = vtk_to_numpy_matrix(slice_node.GetXYToRAS())
    slice_to_ras = vtk_to_numpy_matrix(slice_node.GetSliceToRAS())
    dims = slice_node.GetDimensions()
    centre_world = (xy_to_ras @ np.array([dims[0] / 2.0, dims[1] / 2.0, 0.0, 1.0]))[:3]
    normal_world = slice_to_ras[:3, 2]
    normal_world = normal_world / np.linalg.norm(normal_world)

    # the plane normal in the volume's local RAS (through any parent transform)
    local = world_to_local_points(volume_node, np.array([centre_world, centre_world + normal_world]))
    normal_local = local[1] - local[0]
    if not np.linalg.norm(normal_local) > 0:
        raise InputError("cannot map the slice view's plane into the volume")
    normal_local /= np.linalg.norm(normal_local)
    linear = ijk_to_ras(volume_node)[:3, :3]
    axes_ras = linear / np.linalg.norm(linear, axis=0)  # unit RAS direction of i, j, k
    scores = np.abs(axes_ras.T @ normal_local)
    ijk_axis = int(np.argmax(scores))
    obliquity = math.degrees(math.acos(min(1.0, float(scores[ijk_axis]))))
    numpy_axis = 2 - ijk_axis
    n_slices = shape[numpy_axis]

    ijk = world_to_ijk(volume_node, centre_world[np.newaxis])[0]
    index = int(math.floor(ijk[ijk_axis] + 0.5))
    if not 0 <= index < n_slices:
        # the view centre may be panned off the volume: use the plane point closest to
        # the volume centre instead (same slice for aligned views)
        centre_ijk = (np.array(shape[::-1], dtype=float) - 1.0) / 2.0
        centre_ras = (ijk_to_ras(volume_node) @ np.r_[centre_ijk, 1.0])[:3]
        plane_point_local = world_to_local_points(volume_node, centre_world[np.newaxis])[0]
        on_plane = centre_ras - np.dot(centre_ras - plane_point_local, normal_local) * normal_local
        ijk = (np.linalg.inv(ijk_to_ras(volume_node)) @ np.r_[on_plane, 1.0])[:3]
        index = int(math.floor(ijk[ijk_axis] + 0.5))
    if not 0 <= index < n_slices:
        raise InputError(f"the {slice_node.GetLayoutName() or slice_node.GetName()} view does not "
                         f"cross volume {volume_node.GetName()!r} (slice {index} of 0..{n_slices - 1}); "
                         "move the view onto the volume or ask about the whole volume")
    return SliceSelection(axis=numpy_axis, index=index,
                          view_name=slice_node.GetLayoutName() or slice_node.GetName(),
                          plane=_plane_name(axes_ras[:, ijk_axis]), obliquity_deg=obliquity)


def hints_from_markups(volume_node: Any, axis: int, markups_node: Any | None) -> Hints:
    """Box (from a markups ROI) or points (from a point list) in the in-plane voxel
    indices of slices along numpy ``axis``. Points are positive (inside) hints."""
    if markups_node is None:
        return Hints()
    shape = check_volume(volume_node)
    first, second = IN_PLANE_IJK[axis]
    size_ijk = shape[::-1]
    if markups_node.IsA("vtkMRMLMarkupsROINode"):
        if markups_node.GetNumberOfControlPoints() < 1:
            raise InputError(f"ROI {markups_node.GetName()!r} is not placed yet")
        centre, size = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
        markups_node.GetCenterWorld(centre)
        markups_node.GetSizeWorld(size)
        half = np.array(size, dtype=float) / 2.0
        axes = []
        for getter in (markups_node.GetXAxisWorld, markups_node.GetYAxisWorld, markups_node.GetZAxisWorld):
            axis_world = [0.0, 0.0, 0.0]
            getter(axis_world)
            axes.append(np.array(axis_world, dtype=float))
        centre = np.array(centre, dtype=float)
        corners = np.array([centre + sx * half[0] * axes[0] + sy * half[1] * axes[1] + sz * half[2] * axes[2]
                            for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
        ijk = world_to_ijk(volume_node, corners)
        lo = ijk.min(axis=0)
        hi = ijk.max(axis=0)
        x0, x1 = max(lo[first], 0.0), min(hi[first], size_ijk[first] - 1.0)
        y0, y1 = max(lo[second], 0.0), min(hi[second], size_ijk[second] - 1.0)
        if x1 <= x0 or y1 <= y0:
            raise InputError(f"ROI {markups_node.GetName()!r} does not overlap volume "
                             f"{volume_node.GetName()!r} in the slice plane")
        return Hints(box=(float(x0), float(y0), float(x1), float(y1)))
    if markups_node.IsA("vtkMRMLMarkupsFiducialNode"):
        positions = []
        for index in range(markups_node.GetNumberOfControlPoints()):
            if markups_node.GetNthControlPointPositionStatus(index) != markups_node.PositionDefined:
                continue
            position = [0.0, 0.0, 0.0]
            markups_node.GetNthControlPointPositionWorld(index, position)
            positions.append(position)
        if not positions:
            raise InputError(f"point list {markups_node.GetName()!r} has no placed points")
        ijk = world_to_ijk(volume_node, np.array(positions))
        points = []
        for p in ijk:
            x, y = float(p[first]), float(p[second])
            if not (0 <= x <= size_ijk[first] - 1 and 0 <= y <= size_ijk[second] - 1):
                raise InputError(f"a point of {markups_node.GetName()!r} lies outside volume "
                                 f"{volume_node.GetName()!r}")
            points.append((x, y, 1))
        return Hints(points=points)
    raise InputError(f"{markups_node.GetName()!r} is neither a markups ROI nor a point list")


__all__ = [
    "Hints",
    "SliceSelection",
    "VIEW_NAMES",
    "hints_from_markups",
    "hovered_slice_node",
    "slice_node_by_view",
    "slice_selection",
]
