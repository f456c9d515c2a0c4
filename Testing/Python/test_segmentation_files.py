"""Tests of medsegr.io.segmentation_files: .seg.nrrd files that 3D Slicer (slicer-core) loads, and label maps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from medsegr.errors import InputError
from medsegr.io.images import MedicalImage, image_from_array, load_image
from medsegr.io.segmentation_files import (
    SegmentSpec,
    coded_segment,
    default_color,
    read_seg_nrrd,
    write_labelmap_nrrd,
    write_seg_nrrd,
)

LIVER_TERMINOLOGY = (
    "Segmentation category and type - 3D Slicer General Anatomy list"
    "~SCT^123037004^Anatomical Structure~SCT^10200004^Liver~^^"
    "~Anatomic codes - DICOM master list~^^~^^"
)


def oblique_reference() -> MedicalImage:
    """Anisotropic, rotated (z, y, x) = (6, 7, 8) grid: exercises the LPS/RAS flip in Slicer."""
    cz, sz, cx, sx = np.cos(0.4), np.sin(0.4), np.cos(0.3), np.sin(0.3)
    rotation = np.array([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]]) @ np.array(
        [[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]]
    )
    return image_from_array(
        np.zeros((6, 7, 8), np.float32),
        spacing=(0.8, 1.1, 2.5),
        origin=(-12.5, 30.25, 7.0),
        direction=rotation.ravel(),
    )


def box(shape: tuple[int, int, int], z: slice, y: slice, x: slice) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[z, y, x] = True
    return mask


def four_segments(reference: MedicalImage) -> list[SegmentSpec]:
    """Two disjoint boxes, one box overlapping both, and an empty segment."""
    shape = reference.shape
    return [
        SegmentSpec("liver", box(shape, slice(1, 3), slice(1, 4), slice(1, 4)), (1.0, 0.0, 0.0), LIVER_TERMINOLOGY),
        SegmentSpec("tumour B", box(shape, slice(3, 5), slice(2, 5), slice(4, 7)), (0.0, 0.5, 0.25)),
        SegmentSpec("overlap", box(shape, slice(2, 4), slice(2, 4), slice(2, 6)), (0.1, 0.2, 0.9)),
        SegmentSpec("nothing", np.zeros(shape, dtype=bool), default_color(3)),
    ]


def header_fields(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(NRRD fields ``key: value``, key/value pairs ``key:=value``) of a NRRD header."""
    header = path.read_bytes().split(b"\n\n", 1)[0].decode("utf-8")
    fields: dict[str, str] = {}
    pairs: dict[str, str] = {}
    for line in header.splitlines()[1:]:
        if line.startswith("#"):
            continue
        if ":=" in line:
            key, value = line.split(":=", 1)
            pairs[key] = value
        else:
            key, value = line.split(": ", 1)
            fields[key] = value
    return fields, pairs


# --------------------------------------------------------------------------- slicer-core


@pytest.fixture(scope="module")
def slicer_module() -> Any:
    return pytest.importorskip("slicer")


def new_scene(slicer: Any) -> Any:
    """An MRML scene with the logics that segmentation storage needs."""
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    for name, cls in [
        ("Volumes", slicer.vtkSlicerVolumesLogic),
        ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
        ("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic),
    ]:
        logic = cls()
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(app_logic)
        app_logic.SetModuleLogic(name, logic)
    scene.app_logic = app_logic  # keep the logics alive as long as the scene
    return scene


def slicer_read(slicer: Any, scene: Any, path: Path) -> Any:
    node = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    return node


def reference_volume_node(slicer: Any, scene: Any, reference: MedicalImage) -> Any:
    """A scalar volume node on the reference grid (IJK-to-RAS = LPS geometry with x, y negated)."""
    import vtk

    z, y, x = reference.shape
    image_data = vtk.vtkImageData()
    image_data.SetDimensions(x, y, z)
    image_data.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    matrix = vtk.vtkMatrix4x4()
    for row, values in enumerate(reference.geometry.ijk_to_ras()):
        for column, value in enumerate(values):
            matrix.SetElement(row, column, float(value))
    volume = slicer.vtkMRMLScalarVolumeNode()
    scene.AddNode(volume)
    volume.SetAndObserveImageData(image_data)
    volume.SetIJKToRASMatrix(matrix)
    return volume


def slicer_segment_mask(slicer: Any, scene: Any, segmentation_node: Any, segment_id: str, volume: Any) -> np.ndarray:
    """The segment exported by Slicer onto the reference volume grid, as a (z, y, x) bool array."""
    import vtk
    from vtk.util import numpy_support

    labelmap = slicer.vtkMRMLLabelMapVolumeNode()
    scene.AddNode(labelmap)
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    assert logic.ExportSegmentsToLabelmapNode(segmentation_node, ids, labelmap, volume)
    image_data = labelmap.GetImageData()
    values = numpy_support.vtk_to_numpy(image_data.GetPointData().GetScalars())
    mask: np.ndarray = values.reshape(image_data.GetDimensions()[::-1]) != 0
    return mask


def slicer_tag(segment: Any, name: str) -> str:
    import vtk

    value = vtk.reference("")
    segment.GetTag(name, value)
    return str(value)


def test_seg_nrrd_loads_in_slicer_with_names_colours_and_voxels(slicer_module: Any, tmp_path: Path) -> None:
    reference = oblique_reference()
    segments = four_segments(reference)
    path = tmp_path / "answer.seg.nrrd"
    write_seg_nrrd(path, segments, reference)

    scene = new_scene(slicer_module)
    node = slicer_read(slicer_module, scene, path)
    segmentation = node.GetSegmentation()
    volume = reference_volume_node(slicer_module, scene, reference)

    assert segmentation.GetNumberOfSegments() == 4
    assert segmentation.GetNumberOfLayers() == 2
    for index, expected in enumerate(segments):
        segment = segmentation.GetNthSegment(index)
        assert segment.GetName() == expected.name
        np.testing.assert_allclose(segment.GetColor(), expected.color)
        assert not segment.GetNameAutoGenerated()
        assert not segment.GetColorAutoGenerated()
        voxels = slicer_segment_mask(slicer_module, scene, node, segmentation.GetNthSegmentID(index), volume)
        assert voxels.shape == reference.shape
        np.testing.assert_array_equal(voxels, expected.mask, err_msg=expected.name)
    assert slicer_tag(segmentation.GetNthSegment(0), "TerminologyEntry") == LIVER_TERMINOLOGY


def test_single_layer_seg_nrrd_is_3d_and_loads_in_slicer(slicer_module: Any, tmp_path: Path) -> None:
    reference = oblique_reference()
    segments = [four_segments(reference)[i] for i in (0, 1, 3)]
    path = tmp_path / "flat.seg.nrrd"
    write_seg_nrrd(path, segments, reference)

    fields, _ = header_fields(path)
    assert fields["dimension"] == "3"
    assert fields["kinds"] == "domain domain domain"
    scene = new_scene(slicer_module)
    node = slicer_read(slicer_module, scene, path)
    volume = reference_volume_node(slicer_module, scene, reference)
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfLayers() == 1
    for index, expected in enumerate(segments):
        voxels = slicer_segment_mask(slicer_module, scene, node, segmentation.GetNthSegmentID(index), volume)
        np.testing.assert_array_equal(voxels, expected.mask)


# --------------------------------------------------------------------------- file layout


def test_seg_nrrd_header_layout(tmp_path: Path) -> None:
    reference = oblique_reference()
    path = tmp_path / "answer.seg.nrrd"
    write_seg_nrrd(path, four_segments(reference), reference)

    fields, pairs = header_fields(path)

    assert path.read_bytes().startswith(b"NRRD0004\n")
    assert fields["dimension"] == "4"
    assert fields["sizes"] == "2 8 7 6"
    assert fields["kinds"] == "list domain domain domain"
    assert fields["space"] == "left-posterior-superior"
    assert fields["space directions"].startswith("none (")
    assert fields["encoding"] == "gzip"
    assert pairs["Segmentation_MasterRepresentation"] == "Binary labelmap"
    assert pairs["Segmentation_ContainedRepresentationNames"] == "Binary labelmap|"
    assert pairs["Segmentation_ReferenceImageExtentOffset"] == "0 0 0"
    assert "Reference image geometry|" in pairs["Segmentation_ConversionParameters"]
    layers_and_labels = [(pairs[f"Segment{i}_Layer"], pairs[f"Segment{i}_LabelValue"]) for i in range(4)]
    assert layers_and_labels == [("0", "1"), ("0", "2"), ("1", "1"), ("0", "3")]
    assert [pairs[f"Segment{i}_Name"] for i in range(4)] == ["liver", "tumour B", "overlap", "nothing"]
    assert len({pairs[f"Segment{i}_ID"] for i in range(4)}) == 4
    assert pairs["Segment1_Color"] == "0 0.5 0.25"
    assert all(pairs[f"Segment{i}_Extent"] == "0 7 0 6 0 5" for i in range(4))
    assert all(pairs[f"Segment{i}_NameAutoGenerated"] == "0" for i in range(4))
    assert all(pairs[f"Segment{i}_ColorAutoGenerated"] == "0" for i in range(4))
    assert pairs["Segment0_Tags"] == f"TerminologyEntry:{LIVER_TERMINOLOGY}|"
    assert pairs["Segment1_Tags"] == ""


def test_seg_nrrd_geometry_matches_reference_in_simpleitk(tmp_path: Path) -> None:
    reference = oblique_reference()
    path = tmp_path / "answer.seg.nrrd"
    write_seg_nrrd(path, four_segments(reference), reference)

    stored = sitk.ReadImage(str(path))

    assert stored.GetSize() == (8, 7, 6)
    assert stored.GetNumberOfComponentsPerPixel() == 2
    np.testing.assert_allclose(stored.GetSpacing(), reference.spacing, atol=1e-9)
    np.testing.assert_allclose(stored.GetOrigin(), reference.origin, atol=1e-12)
    np.testing.assert_allclose(stored.GetDirection(), reference.direction, atol=1e-12)


def test_read_seg_nrrd_round_trip(tmp_path: Path) -> None:
    reference = oblique_reference()
    segments = four_segments(reference)
    path = tmp_path / "answer.seg.nrrd"
    write_seg_nrrd(path, segments, reference)

    back, geometry = read_seg_nrrd(path)

    assert geometry.shape == reference.shape
    np.testing.assert_allclose(geometry.spacing, reference.spacing, atol=1e-9)
    np.testing.assert_allclose(geometry.origin, reference.origin, atol=1e-12)
    np.testing.assert_allclose(geometry.direction, reference.direction, atol=1e-12)
    assert [s.name for s in back] == [s.name for s in segments]
    for read, written in zip(back, segments, strict=True):
        assert read.mask.dtype == np.bool_
        np.testing.assert_array_equal(read.mask, written.mask)
        np.testing.assert_allclose(read.color, written.color)
        assert read.terminology == written.terminology
    assert not back[3].mask.any()


def test_many_segments_in_one_layer_use_uint16(tmp_path: Path) -> None:
    reference = image_from_array(np.zeros((5, 8, 8), np.float32))
    segments = []
    for index in range(300):
        mask = np.zeros(reference.shape, dtype=bool)
        mask.flat[index] = True
        segments.append(SegmentSpec(f"voxel {index}", mask, default_color(index)))
    path = tmp_path / "many.seg.nrrd"
    write_seg_nrrd(path, segments, reference)

    fields, _ = header_fields(path)
    back, _ = read_seg_nrrd(path)

    assert fields["type"] == "unsigned short"
    assert fields["endian"] == "little"
    assert all(np.array_equal(r.mask, w.mask) for r, w in zip(back, segments, strict=True))


def test_no_segments_writes_empty_segmentation(tmp_path: Path) -> None:
    reference = oblique_reference()
    path = tmp_path / "none.seg.nrrd"
    write_seg_nrrd(path, [], reference)

    back, geometry = read_seg_nrrd(path)

    assert back == []
    assert geometry.shape == reference.shape


def test_2d_reference(tmp_path: Path) -> None:
    reference = image_from_array(np.zeros((9, 11)), spacing=(0.5, 0.5))
    mask = np.zeros(reference.shape, dtype=bool)
    mask[0, 2:5, 3:7] = True
    path = tmp_path / "slice.seg.nrrd"
    write_seg_nrrd(path, [SegmentSpec("lesion", mask, (1.0, 1.0, 0.0))], reference)

    back, geometry = read_seg_nrrd(path)

    assert geometry.shape == (1, 9, 11)
    np.testing.assert_array_equal(back[0].mask, mask)


# --------------------------------------------------------------------------- label maps


def test_labelmap_nrrd_later_segments_win(tmp_path: Path) -> None:
    reference = oblique_reference()
    segments = four_segments(reference)
    path = tmp_path / "labels.nrrd"
    write_labelmap_nrrd(path, segments, reference)

    stored = sitk.ReadImage(str(path))
    labels = sitk.GetArrayFromImage(stored)

    expected = np.zeros(reference.shape, np.uint8)
    for label, segment in enumerate(segments, start=1):
        expected[segment.mask] = label
    assert stored.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(labels, expected)
    assert labels[2, 2, 2] == 3  # "overlap" painted over "liver"
    np.testing.assert_allclose(stored.GetDirection(), reference.direction, atol=1e-12)
    np.testing.assert_allclose(stored.GetOrigin(), reference.origin, atol=1e-12)
    assert load_image(path).shape == reference.shape
    assert [p.name for p in tmp_path.iterdir()] == ["labels.nrrd"]


def test_labelmap_with_more_than_255_segments_is_uint16(tmp_path: Path) -> None:
    reference = image_from_array(np.zeros((5, 8, 8), np.float32))
    segments = [SegmentSpec(f"s{i}", np.zeros(reference.shape, bool), default_color(i)) for i in range(256)]
    segments[-1].mask[0, 0, 0] = True
    path = tmp_path / "labels.nrrd"
    write_labelmap_nrrd(path, segments, reference)

    stored = sitk.ReadImage(str(path))

    assert stored.GetPixelID() == sitk.sitkUInt16
    assert sitk.GetArrayFromImage(stored)[0, 0, 0] == 256


# --------------------------------------------------------------------------- atomic writes and bad input


def test_successful_write_leaves_only_the_file(tmp_path: Path) -> None:
    reference = oblique_reference()
    write_seg_nrrd(tmp_path / "a.seg.nrrd", four_segments(reference), reference)

    assert [p.name for p in tmp_path.iterdir()] == ["a.seg.nrrd"]


@pytest.mark.parametrize("writer", [write_seg_nrrd, write_labelmap_nrrd])
def test_wrong_mask_shape_writes_nothing(tmp_path: Path, writer: Any) -> None:
    reference = oblique_reference()
    segments = four_segments(reference)
    segments.append(SegmentSpec("misfit", np.zeros((6, 7, 9), dtype=bool), (0.0, 0.0, 0.0)))
    path = tmp_path / "out.seg.nrrd"

    with pytest.raises(InputError, match=r"mask of segment 'misfit' has shape \(6, 7, 9\), expected \(6, 7, 8\)"):
        writer(path, segments, reference)

    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_previous_file(tmp_path: Path) -> None:
    reference = oblique_reference()
    path = tmp_path / "out.seg.nrrd"
    write_seg_nrrd(path, four_segments(reference), reference)
    before = path.read_bytes()

    with pytest.raises(InputError):
        write_seg_nrrd(path, [SegmentSpec("bad", np.zeros((1, 1, 1), bool), (0.0, 0.0, 0.0))], reference)

    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.seg.nrrd"]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"name": ""}, "segment name must be a non-empty string"),
        ({"name": "two\nlines"}, "segment name must be one line"),
        ({"color": (1.0, 0.0)}, "colour of segment 'x' must be 3 numbers"),
        ({"color": (1.0, 0.0, 2.0)}, r"colour of segment 'x' must lie in 0\.\.1"),
        ({"color": (1.0, 0.0, float("nan"))}, r"colour of segment 'x' must lie in 0\.\.1"),
        ({"terminology": "a|b"}, "terminology of segment 'x' must be one line without '\\|'"),
        ({"mask": np.full((6, 7, 8), "a")}, "mask of segment 'x' must be boolean"),
    ],
)
def test_bad_segment_is_rejected(tmp_path: Path, change: dict[str, Any], match: str) -> None:
    reference = oblique_reference()
    fields: dict[str, Any] = {"name": "x", "mask": np.zeros(reference.shape, bool), "color": (1.0, 0.0, 0.0)}
    fields.update(change)

    with pytest.raises(InputError, match=match):
        write_seg_nrrd(tmp_path / "out.seg.nrrd", [SegmentSpec(**fields)], reference)

    assert list(tmp_path.iterdir()) == []


def test_seg_file_name_must_end_in_seg_nrrd(tmp_path: Path) -> None:
    reference = oblique_reference()
    with pytest.raises(InputError, match=r"must end in \.seg\.nrrd"):
        write_seg_nrrd(tmp_path / "out.nrrd", four_segments(reference), reference)


def test_missing_output_folder(tmp_path: Path) -> None:
    reference = oblique_reference()
    with pytest.raises(InputError, match="output folder does not exist"):
        write_seg_nrrd(tmp_path / "missing" / "out.seg.nrrd", four_segments(reference), reference)


def test_read_seg_nrrd_bad_input(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="segmentation file does not exist"):
        read_seg_nrrd(tmp_path / "none.seg.nrrd")
    broken = tmp_path / "broken.seg.nrrd"
    broken.write_bytes(b"NRRD0004\ntype: unsigned char\ndimension: 3\nsizes: 4 4 4\nencoding: gzip\n\nxx")
    with pytest.raises(InputError, match=r"could not read segmentation .*broken\.seg\.nrrd"):
        read_seg_nrrd(broken)


def test_default_color_palette() -> None:
    colours = [default_color(i) for i in range(12)]

    assert len(set(colours)) == 12
    assert all(0.0 <= c <= 1.0 for colour in colours for c in colour)
    assert default_color(12) == default_color(0)


def test_coded_segments_carry_the_vocabulary_terminology_and_colour_into_slicer(
        slicer_module: Any, tmp_path: Path) -> None:
    from medsegr import vocabulary

    reference = oblique_reference()
    shape = reference.shape
    names = ["right kidney", "hepatic lesion", "blob 7"]
    masks = [box(shape, slice(0, 2), slice(0, 3), slice(0, 2)), box(shape, slice(2, 4), slice(1, 3), slice(1, 4)),
             box(shape, slice(0, 1), slice(4, 5), slice(3, 5))]
    specs = [coded_segment(name, mask, index) for index, (name, mask) in enumerate(zip(names, masks))]
    assert specs[2].terminology is None and specs[2].color == default_color(2)  # no code: free text only
    path = tmp_path / "coded.seg.nrrd"
    write_seg_nrrd(path, specs, reference)

    scene = new_scene(slicer_module)
    segmentation = slicer_read(slicer_module, scene, path).GetSegmentation()
    for index, name in enumerate(names[:2]):
        segment = segmentation.GetNthSegment(index)
        entry = vocabulary.lookup(name)
        assert segment.GetName() == name
        assert slicer_tag(segment, segment.GetTerminologyEntryTagName()) == vocabulary.slicer_terminology_string(entry)
        np.testing.assert_allclose(segment.GetColor(), [c / 255 for c in entry.color])
    kidney_tag = slicer_tag(segmentation.GetNthSegment(0), "TerminologyEntry")
    assert "~SCT^64033007^Kidney~SCT^24028007^Right~" in kidney_tag
    assert slicer_tag(segmentation.GetNthSegment(1), "TerminologyEntry").endswith("~SCT^10200004^Liver~^^")
    uncoded = segmentation.GetNthSegment(2)
    # no tag in the file: Slicer gives the segment its own generic default ("Tissue")
    assert uncoded.GetName() == "blob 7"
    assert uncoded.GetTerminology() == slicer_module.vtkSegment().GetTerminology()
    assert read_seg_nrrd(path)[0][2].terminology is None
    np.testing.assert_allclose(uncoded.GetColor(), default_color(2))
