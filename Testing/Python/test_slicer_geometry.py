"""The Slicer module's geometry, in a real MRML scene (slicer-core): the voxel slice a
slice view shows (axial, sagittal, coronal, oblique views; non-identity IJK-to-RAS;
transformed volumes), hints from markups, and the LPS geometry sent to the engine."""

from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from medsegr.errors import InputError  # noqa: E402
from MedSegRLib.current_slice import hints_from_markups, hovered_slice_node, slice_node_by_view, slice_selection  # noqa: E402
from MedSegRLib.volume_geometry import engine_geometry, volume_array, world_to_ijk  # noqa: E402
from mrml_scene import add_volume, ijk_to_ras_matrix, rotation, set_plane, voxel_ras  # noqa: E402

SHAPE = (20, 30, 40)  # (k, j, i) = (z, y, x)
R, A, S = np.eye(3)


def sagittal_acquisition(scene):
    """i runs posterior (0.8 mm), j runs superior (1.2 mm), k runs right (3 mm): every
    standard view is aligned with a voxel axis, but none with the array's first axis."""
    columns = np.stack([-A, S, R], axis=1)
    matrix = ijk_to_ras_matrix(columns, (0.8, 1.2, 3.0), (12.0, -40.0, 7.5))
    array = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE)
    return add_volume(scene, array, matrix, "sagittal MR")


def oblique_acquisition(scene, degrees=15.0):
    columns = rotation("x", degrees) @ rotation("z", 10.0)
    matrix = ijk_to_ras_matrix(columns, (0.9, 1.1, 2.5), (-30.0, 20.0, -15.0))
    return add_volume(scene, np.zeros(SHAPE, np.float32), matrix, "oblique CT")


@pytest.mark.parametrize("view, normal, transverse, numpy_axis, plane", [
    ("Red", S, R, 1, "axial"),        # axial view <-> j (superior) -> numpy axis 1
    ("Yellow", R, A, 0, "sagittal"),  # sagittal view <-> k (right) -> numpy axis 0
    ("Green", A, R, 2, "coronal"),    # coronal view <-> i (posterior) -> numpy axis 2
])
def test_standard_views_pick_the_voxel_slice_they_show(mrml_scene, view, normal, transverse, numpy_axis, plane):
    volume = sagittal_acquisition(mrml_scene)
    node = slice_node_by_view(mrml_scene, view)
    voxel = (31, 17, 6)  # (i, j, k)
    set_plane(node, normal, transverse, voxel_ras(volume, voxel))
    selection = slice_selection(volume, node)
    assert (selection.axis, selection.index) == (numpy_axis, voxel[2 - numpy_axis])
    assert selection.plane == plane and selection.view_name == view
    assert not selection.oblique and selection.obliquity_deg < 1e-6
    # the slice is the voxels the view shows: the array taken along that axis
    assert np.take(volume_array(volume), selection.index, axis=selection.axis).shape == tuple(
        n for a, n in enumerate(SHAPE) if a != numpy_axis)


def test_half_voxel_offsets_round_to_the_displayed_slice(mrml_scene):
    volume = sagittal_acquisition(mrml_scene)
    node = slice_node_by_view(mrml_scene, "Red")
    for j, expected in ((9.49, 9), (9.51, 10), (0.0, 0), (29.4, 29)):
        set_plane(node, S, R, voxel_ras(volume, (20, j, 10)))
        assert slice_selection(volume, node).index == expected


def test_oblique_view_uses_the_nearest_voxel_axis_and_says_so(mrml_scene):
    volume = sagittal_acquisition(mrml_scene)
    node = slice_node_by_view(mrml_scene, "Red")
    tilt = rotation("y", 20.0)  # tilt the axial plane 20 degrees towards sagittal
    centre_voxel = (20, 12, 10)
    set_plane(node, tilt @ S, tilt @ R, voxel_ras(volume, centre_voxel))
    selection = slice_selection(volume, node)
    assert selection.axis == 1 and selection.index == 12  # still nearest to j, through the centre
    assert selection.oblique and selection.obliquity_deg == pytest.approx(20.0, abs=1e-6)
    assert "oblique by 20.0 degrees" in selection.describe()


def test_oblique_acquisition_viewed_in_its_own_plane(mrml_scene):
    volume = oblique_acquisition(mrml_scene)
    node = slice_node_by_view(mrml_scene, "Green")
    # rotate the view to the volume's k planes through voxel (11, 7, 13)
    volume_matrix = ijk_to_ras_matrix(rotation("x", 15.0) @ rotation("z", 10.0), (1, 1, 1), (0, 0, 0))[:3, :3]
    normal, transverse = volume_matrix[:, 2], volume_matrix[:, 0]
    set_plane(node, normal, transverse, voxel_ras(volume, (11, 7, 13)))
    selection = slice_selection(volume, node)
    assert (selection.axis, selection.index) == (0, 13)
    assert selection.obliquity_deg < 1e-6
    # a standard axial view of this rotated volume is oblique to its voxels
    set_plane(node, S, R, voxel_ras(volume, (11, 7, 13)))
    tilted = slice_selection(volume, node)
    assert tilted.axis == 0 and tilted.oblique and 10.0 < tilted.obliquity_deg < 25.0


def test_panned_view_still_finds_its_slice_and_a_plane_off_the_volume_is_refused(mrml_scene):
    volume = sagittal_acquisition(mrml_scene)
    node = slice_node_by_view(mrml_scene, "Red")
    point = voxel_ras(volume, (20, 5, 10))
    set_plane(node, S, R, point + np.array([500.0, 0.0, 0.0]))  # the view centre is far to the right
    assert slice_selection(volume, node).index == 5
    set_plane(node, S, R, voxel_ras(volume, (20, 45, 10)))  # 15 voxels above the volume
    with pytest.raises(InputError, match="does not cross"):
        slice_selection(volume, node)


def test_transformed_volume_maps_the_view_through_the_transform(mrml_scene):
    volume = sagittal_acquisition(mrml_scene)
    transform = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = np.eye(4)
    shift[:3, 3] = (0.0, 0.0, 6.0)  # 6 mm up = 5 voxels of 1.2 mm along j
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(shift))
    volume.SetAndObserveTransformNodeID(transform.GetID())
    node = slice_node_by_view(mrml_scene, "Red")
    set_plane(node, S, R, voxel_ras(volume, (20, 10, 10)))  # untransformed voxel j=10 position
    assert slice_selection(volume, node).index == 5
    ijk = world_to_ijk(volume, voxel_ras(volume, (3, 4, 5))[np.newaxis] + shift[:3, 3])[0]
    assert np.allclose(ijk, (3, 4, 5))


def test_hovered_view_comes_from_the_crosshair(mrml_scene):
    assert hovered_slice_node(mrml_scene) is None
    yellow = slice_node_by_view(mrml_scene, "Yellow")
    mrml_scene.GetFirstNodeByClass("vtkMRMLCrosshairNode").SetCursorPositionXYZ([10.0, 20.0, 0.0], yellow)
    assert hovered_slice_node(mrml_scene) is yellow


def test_roi_and_points_become_hints_in_the_slice_plane(mrml_scene):
    volume = sagittal_acquisition(mrml_scene)
    roi = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "lesion box")
    lo, hi = voxel_ras(volume, (10, 4, 3)), voxel_ras(volume, (25, 14, 8))
    roi.SetCenterWorld(*((lo + hi) / 2))
    roi.SetSizeWorld(*np.abs(hi - lo))
    # axial slices (numpy axis 1 = j): in-plane (i, k)
    assert hints_from_markups(volume, 1, roi).box == pytest.approx((10, 3, 25, 8))
    # sagittal slices (numpy axis 0 = k): in-plane (i, j)
    assert hints_from_markups(volume, 0, roi).box == pytest.approx((10, 4, 25, 14))
    points = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "seeds")
    points.AddControlPoint(*voxel_ras(volume, (7, 9, 11)))
    points.AddControlPoint(*voxel_ras(volume, (30, 2, 1)))
    hints = hints_from_markups(volume, 2, points)  # coronal slices (i): in-plane (j, k)
    assert hints.box is None and hints.points == [pytest.approx((9, 11, 1)), pytest.approx((2, 1, 1))]
    assert hints_from_markups(volume, 2, None).empty


def test_bad_hints_are_refused(mrml_scene):
    volume = sagittal_acquisition(mrml_scene)
    empty = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "nothing placed")
    with pytest.raises(InputError, match="no placed points"):
        hints_from_markups(volume, 1, empty)
    far = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "far box")
    far.SetCenterWorld(900.0, 900.0, 900.0)
    far.SetSizeWorld(5.0, 5.0, 5.0)
    with pytest.raises(InputError, match="does not overlap"):
        hints_from_markups(volume, 1, far)
    outside = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "outside")
    outside.AddControlPoint(900.0, 0.0, 0.0)
    with pytest.raises(InputError, match="outside volume"):
        hints_from_markups(volume, 1, outside)


def test_engine_geometry_matches_what_itk_reads_from_slicers_own_file(mrml_scene, tmp_path):
    """Slicer writes the volume (its own NRRD writer, RAS->LPS done by Slicer); the
    engine's reader (SimpleITK) must see exactly the geometry we send."""
    from medsegr.io.images import load_image

    volume = oblique_acquisition(mrml_scene)
    storage = mrml_scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    path = tmp_path / "volume.nrrd"
    storage.SetFileName(str(path))
    assert storage.WriteData(volume)
    image = load_image(str(path))
    geometry = engine_geometry(volume)
    assert geometry.shape == image.shape == SHAPE
    assert np.allclose(geometry.spacing, image.spacing)
    assert np.allclose(geometry.origin, image.origin)
    assert np.allclose(geometry.direction, image.direction)


def test_volumes_the_engine_cannot_use_are_refused(mrml_scene):
    from MedSegRLib.volume_geometry import check_volume

    with pytest.raises(InputError, match="select an input volume"):
        check_volume(None)
    empty = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(InputError, match="no image data"):
        check_volume(empty)
    label = mrml_scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    with pytest.raises(InputError, match="label map"):
        check_volume(label)
    nan = add_volume(mrml_scene, np.full((3, 4, 5), np.nan, np.float32), np.eye(4), "nan")
    with pytest.raises(InputError, match="NaN"):
        volume_array(nan)
