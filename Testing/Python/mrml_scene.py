"""Real MRML scenes from the ``slicer-core`` wheel, set up the way 3D Slicer sets them up.

Slicer registers its module logics with the application logic at start-up; without
them segmentations cannot create binary labelmaps. :func:`new_scene` does the same
for the logics the MedSegR module uses, plus the nodes a Slicer scene always has
(slice nodes for the Red/Yellow/Green views, a crosshair node).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

_LOGICS = (
    ("Volumes", "vtkSlicerVolumesLogic"),
    ("Segmentations", "vtkSlicerSegmentationsModuleLogic"),
    ("SubjectHierarchy", "vtkSlicerSubjectHierarchyModuleLogic"),
    ("Markups", "vtkSlicerMarkupsLogic"),
)


def new_scene(with_views: bool = True) -> Any:
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    logics = []
    for name, class_name in _LOGICS:
        logic = getattr(slicer, class_name)()
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(app_logic)
        app_logic.SetModuleLogic(name, logic)
        logics.append(logic)
    scene.medsegr_keep_alive = (app_logic, logics)  # the logics live as long as the scene
    if with_views:
        add_views(scene)
    return scene


def add_views(scene: Any, width: int = 400, height: int = 300) -> dict[str, Any]:
    """Red (axial), Yellow (sagittal), Green (coronal) slice and slice-composite nodes,
    and a crosshair."""
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    views = {}
    for name, orientation in (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal")):
        node = scene.CreateNodeByClass("vtkMRMLSliceNode")  # carries the scene's default presets
        node.SetName(name)
        node.SetLayoutName(name)
        node.SetSingletonTag(name)
        scene.AddNode(node)
        node.SetDimensions(width, height, 1)
        node.SetFieldOfView(250.0, 250.0 * height / width, 1.0)
        node.SetOrientation(orientation)
        node.UpdateMatrices()
        views[name] = node
        composite = scene.CreateNodeByClass("vtkMRMLSliceCompositeNode")
        composite.SetLayoutName(name)
        composite.SetSingletonTag(name)
        scene.AddNode(composite)
    if scene.GetFirstNodeByClass("vtkMRMLCrosshairNode") is None:
        crosshair = slicer.vtkMRMLCrosshairNode()
        crosshair.SetSingletonTag("default")
        scene.AddNode(crosshair)
    return views


def add_volume(scene: Any, array: np.ndarray, ijk_to_ras: np.ndarray, name: str = "volume") -> Any:
    """A scalar volume node holding ``array`` (z, y, x) with the given IJK-to-RAS."""
    data = np.ascontiguousarray(array)
    z, y, x = data.shape
    image = vtk.vtkImageData()
    image.SetDimensions(x, y, z)
    image.AllocateScalars(numpy_support.get_vtk_array_type(data.dtype), 1)
    image.GetPointData().GetScalars().DeepCopy(numpy_support.numpy_to_vtk(data.ravel(), deep=True))
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(ijk_to_ras[r, c]))
    node.SetIJKToRASMatrix(matrix)
    node.SetAndObserveImageData(image)
    node.CreateDefaultDisplayNodes()
    return node


def ijk_to_ras_matrix(columns_ras: np.ndarray, spacing: tuple[float, float, float],
                      origin_ras: tuple[float, float, float]) -> np.ndarray:
    """4x4 IJK-to-RAS from unit axis directions (columns, RAS), spacing and origin."""
    matrix = np.eye(4)
    matrix[:3, :3] = np.asarray(columns_ras, dtype=float) * np.asarray(spacing, dtype=float)
    matrix[:3, 3] = origin_ras
    return matrix


def rotation(axis: str, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    return {"x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
            "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
            "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])}[axis]


def voxel_ras(volume: Any, ijk: tuple[float, float, float]) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    return np.array(matrix.MultiplyPoint([*map(float, ijk), 1.0])[:3])


def set_plane(slice_node: Any, normal: np.ndarray, transverse: np.ndarray, point: np.ndarray) -> None:
    """Put a slice view's plane through ``point`` with the given normal (RAS)."""
    n = np.asarray(normal, dtype=float) / np.linalg.norm(normal)
    t = np.asarray(transverse, dtype=float)
    t = t - np.dot(t, n) * n
    t /= np.linalg.norm(t)
    slice_node.SetSliceToRASByNTP(*n, *t, *map(float, point), 0)
    slice_node.UpdateMatrices()


def load_volume_file(scene: Any, path: str, name: str) -> Any:
    """A volume read from a file by Slicer's own reader (NRRD, NIfTI, …)."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    if storage.ReadData(node) != 1:
        raise RuntimeError(f"Slicer could not read {path}")
    node.CreateDefaultDisplayNodes()
    return node


def show_in_view(scene: Any, volume: Any, view: str = "Red") -> None:
    """Make ``volume`` the background of a slice view (what loading a volume does in Slicer)."""
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        if composite.GetLayoutName() == view:
            composite.SetBackgroundVolumeID(volume.GetID())
