"""Tests of medsegr.io.images: reading, validating and writing images (real files, no mocks of SimpleITK)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from medsegr.errors import InputError
from medsegr.io.images import MedicalImage, image_from_array, load_image, write_image

SPACING = (0.7, 0.9, 2.5)
ORIGIN = (-12.5, 30.25, 7.0)


def oblique_direction() -> tuple[float, ...]:
    """A rotation about z then x: no axis-aligned entries, still orthonormal."""
    cz, sz, cx, sx = np.cos(0.4), np.sin(0.4), np.cos(0.3), np.sin(0.3)
    about_z = np.array([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]])
    about_x = np.array([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]])
    return tuple((about_z @ about_x).ravel().tolist())


def ct_like_volume() -> np.ndarray:
    """int16 (z, y, x) = (5, 6, 7) volume in Hounsfield-like units (air -1024 .. bone)."""
    rng = np.random.default_rng(0)
    return rng.integers(-1024, 1500, size=(5, 6, 7)).astype(np.int16)


def oblique_sitk(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(oblique_direction())
    return image


def assert_geometry(image: MedicalImage, atol: float = 1e-6) -> None:
    np.testing.assert_allclose(image.spacing, SPACING, atol=atol)
    np.testing.assert_allclose(image.origin, ORIGIN, atol=atol)
    np.testing.assert_allclose(image.direction, oblique_direction(), atol=atol)


def pydicom_test_file(name: str) -> Path:
    spec = importlib.util.find_spec("pydicom")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent / "data" / "test_files" / name


def write_dicom_series(folder: Path, volume: np.ndarray, series: int, modality: str, dz: float) -> None:
    """Write ``volume`` (z, y, x int16) as one DICOM file per slice with position/orientation tags."""
    uid_root = "1.2.826.0.1.3680043.2.1125.99"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k, plane in enumerate(volume):
        image = sitk.GetImageFromArray(plane)
        image.SetSpacing((0.8, 0.6))
        tags = {
            "0008|0060": modality,
            "0020|000d": f"{uid_root}.1",
            "0020|000e": f"{uid_root}.2.{series}",
            "0008|0018": f"{uid_root}.3.{series}.{k + 1}",
            "0020|0013": str(k + 1),
            "0020|0032": f"-10\\20\\{5.0 + k * dz}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0018|0050": str(dz),
        }
        for key, value in tags.items():
            image.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"s{series}_{k:03d}.dcm"))
        writer.Execute(image)


# --------------------------------------------------------------------------- good files


@pytest.mark.parametrize("extension", [".nrrd", ".nii", ".nii.gz", ".mha"])
def test_oblique_anisotropic_round_trip_through_file(tmp_path: Path, extension: str) -> None:
    volume = ct_like_volume()
    path = tmp_path / f"volume{extension}"
    sitk.WriteImage(oblique_sitk(volume), str(path))

    image = load_image(path)

    assert image.array.dtype == np.float32
    assert image.shape == (5, 6, 7)
    np.testing.assert_array_equal(image.array, volume.astype(np.float32))
    assert_geometry(image, atol=1e-4 if "nii" in extension else 1e-9)  # NIfTI stores float32 geometry
    assert image.modality == "CT"
    assert image.is_2d is False
    assert image.source == str(path)


@pytest.mark.parametrize("extension", [".nrrd", ".nii.gz"])
def test_write_image_round_trip_keeps_geometry_and_leaves_no_temp_files(tmp_path: Path, extension: str) -> None:
    original = image_from_array(ct_like_volume(), spacing=SPACING, origin=ORIGIN, direction=oblique_direction())
    path = tmp_path / f"out{extension}"

    assert write_image(path, original) == path

    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    again = load_image(path)
    np.testing.assert_array_equal(again.array, original.array)
    assert_geometry(again, atol=1e-4 if "nii" in extension else 1e-9)


def test_write_image_writes_sitk_mask_with_its_pixel_type(tmp_path: Path) -> None:
    reference = image_from_array(ct_like_volume(), spacing=SPACING, origin=ORIGIN, direction=oblique_direction())
    mask = reference.array > 0
    path = tmp_path / "mask.nrrd"

    write_image(path, reference.to_sitk(mask))

    stored = sitk.ReadImage(str(path))
    assert stored.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(stored), mask.astype(np.uint8))
    np.testing.assert_allclose(stored.GetDirection(), oblique_direction(), atol=1e-12)


def test_dicom_single_file_is_ct() -> None:
    image = load_image(pydicom_test_file("CT_small.dcm"))

    assert image.modality == "CT"
    assert image.shape == (1, 128, 128)
    assert image.is_2d is True
    assert image.array.dtype == np.float32


def test_dicom_tag_wins_over_modality_argument() -> None:
    assert load_image(pydicom_test_file("CT_small.dcm"), modality="MR").modality == "CT"


def test_dicom_file_without_extension_is_recognised(tmp_path: Path) -> None:
    path = tmp_path / "IM0001"
    shutil.copyfile(pydicom_test_file("CT_small.dcm"), path)

    assert load_image(path).modality == "CT"


def test_dicom_series_folder_reads_largest_series(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    main = rng.integers(0, 800, size=(5, 6, 4)).astype(np.int16)
    write_dicom_series(tmp_path, main, series=1, modality="MR", dz=2.5)
    write_dicom_series(tmp_path, main[:3], series=2, modality="CT", dz=1.0)

    image = load_image(tmp_path)

    assert image.shape == (5, 6, 4)
    assert image.modality == "MR"
    np.testing.assert_array_equal(image.array, main.astype(np.float32))
    np.testing.assert_allclose(image.spacing, (0.8, 0.6, 2.5), atol=1e-6)
    np.testing.assert_allclose(image.origin, (-10.0, 20.0, 5.0), atol=1e-6)


def test_dicom_other_modality_becomes_ot(tmp_path: Path) -> None:
    write_dicom_series(tmp_path, np.ones((1, 4, 4), np.int16), series=1, modality="PT", dz=1.0)

    assert load_image(tmp_path / "s1_000.dcm").modality == "OT"


@pytest.mark.parametrize("channels", [3, 4])
def test_png_colour_becomes_grey_2d(tmp_path: Path, channels: int) -> None:
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, size=(9, 11, channels)).astype(np.uint8)
    path = tmp_path / "photo.png"
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(path))

    image = load_image(path)

    expected = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    assert image.shape == (1, 9, 11)
    assert image.is_2d is True
    assert image.modality == "OT"
    np.testing.assert_allclose(image.array[0], expected, atol=1e-3)


def test_grey_png_keeps_values(tmp_path: Path) -> None:
    grey = np.arange(20, dtype=np.uint8).reshape(4, 5)
    path = tmp_path / "grey.png"
    sitk.WriteImage(sitk.GetImageFromArray(grey), str(path))

    image = load_image(path)

    np.testing.assert_array_equal(image.array, grey[np.newaxis].astype(np.float32))
    assert image.spacing[2] == 1.0


def test_modality_heuristic_and_argument(tmp_path: Path) -> None:
    positive = tmp_path / "mr.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(60, dtype=np.int16).reshape(3, 4, 5)), str(positive))

    assert load_image(positive).modality == "MR"
    assert load_image(positive, modality="ct").modality == "CT"


def test_4d_file_with_single_volume_is_read_as_3d(tmp_path: Path) -> None:
    path = tmp_path / "single.nrrd"
    sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(np.ones((3, 4, 5), np.float32))]), str(path))

    assert load_image(path).shape == (3, 4, 5)


# --------------------------------------------------------------------------- bad files


def expect_input_error(match: str, path: Path, **kwargs: str) -> None:
    with pytest.raises(InputError, match=match):
        load_image(path, **kwargs)


def test_missing_path(tmp_path: Path) -> None:
    expect_input_error("does not exist", tmp_path / "nothing.nrrd")


def test_unsupported_extension_lists_supported(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello", encoding="utf-8")
    expect_input_error(r"unsupported image format '\.txt'.*supported are .*\.nrrd.*\.nii\.gz", path)


def test_file_without_extension_that_is_not_dicom(tmp_path: Path) -> None:
    path = tmp_path / "mystery"
    path.write_bytes(b"\0" * 200)
    expect_input_error("unsupported image format '\\(no extension\\)'", path)


def test_truncated_nrrd(tmp_path: Path) -> None:
    whole = tmp_path / "whole.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(ct_like_volume()), str(whole), useCompression=False)
    cut = tmp_path / "cut.nrrd"
    cut.write_bytes(whole.read_bytes()[:-40])
    expect_input_error("could not read image .*cut.nrrd.*truncated", cut)


def test_garbage_nifti(tmp_path: Path) -> None:
    path = tmp_path / "garbage.nii.gz"
    path.write_bytes(np.random.default_rng(3).integers(0, 256, 600).astype(np.uint8).tobytes())
    expect_input_error("could not read image .*garbage.nii.gz.*not a valid gzip", path)


def test_truncated_nifti_gz(tmp_path: Path) -> None:
    """ITK would read a cut-off .nii.gz with zeros for the missing voxels."""
    path = tmp_path / "cut.nii.gz"
    noise = np.random.default_rng(4).random((8, 32, 32)).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(noise), str(path))
    path.write_bytes(path.read_bytes()[:4000])
    expect_input_error("truncated", path)


def test_4d_image(tmp_path: Path) -> None:
    path = tmp_path / "series.nrrd"
    frame = sitk.GetImageFromArray(np.zeros((3, 4, 5), np.float32))
    sitk.WriteImage(sitk.JoinSeries([frame, frame]), str(path))
    expect_input_error("4-D images are not supported: .*series.nrrd", path)


def test_vector_image_with_many_components(tmp_path: Path) -> None:
    path = tmp_path / "vectors.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5, 6), np.float32), isVector=True), str(path))
    expect_input_error("vector images with 6 components per voxel are not supported", path)


def test_zero_size_axis_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.nrrd"
    path.write_text("NRRD0004\ntype: short\ndimension: 3\nsizes: 4 0 3\nencoding: raw\n\n")
    expect_input_error("could not read image .*size is zero", path)


def test_nan_and_inf_voxels(tmp_path: Path) -> None:
    values = np.zeros((3, 4, 5), np.float32)
    values[0, 0, 0] = np.nan
    values[2, 3, 4] = -np.inf
    path = tmp_path / "nan.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(values), str(path))
    expect_input_error("image contains 2 NaN/Inf voxels", path)


def test_folder_without_dicom(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("not dicom", encoding="utf-8")
    expect_input_error("folder contains no DICOM series", tmp_path)


def test_unknown_modality_argument(tmp_path: Path) -> None:
    path = tmp_path / "ok.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 2, 2), np.float32)), str(path))
    expect_input_error("unknown modality 'PET'", path, modality="PET")


# --------------------------------------------------------------------------- arrays


def test_image_from_2d_array_defaults() -> None:
    image = image_from_array(np.arange(12, dtype=np.uint8).reshape(3, 4))

    assert image.shape == (1, 3, 4)
    assert image.is_2d is True
    assert image.array.dtype == np.float32
    assert image.spacing == (1.0, 1.0, 1.0)
    assert image.origin == (0.0, 0.0, 0.0)
    assert image.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert image.modality == "OT"
    assert image.source == "<array>"


def test_image_from_2d_array_accepts_2_value_spacing() -> None:
    image = image_from_array(np.zeros((3, 4)), spacing=(0.5, 0.25), origin=(1.0, 2.0))

    assert image.spacing == (0.5, 0.25, 1.0)
    assert image.origin == (1.0, 2.0, 0.0)


def test_image_from_array_modality() -> None:
    assert image_from_array(ct_like_volume()).modality == "CT"
    assert image_from_array(np.zeros((2, 3, 4)), modality="mr").modality == "MR"


def test_to_sitk_keeps_geometry_for_masks() -> None:
    image = image_from_array(ct_like_volume(), spacing=SPACING, origin=ORIGIN, direction=oblique_direction())

    as_sitk = image.to_sitk(image.array > 0)

    assert as_sitk.GetPixelID() == sitk.sitkUInt8
    assert as_sitk.GetSize() == (7, 6, 5)
    assert as_sitk.GetSpacing() == SPACING
    assert as_sitk.GetOrigin() == ORIGIN
    np.testing.assert_allclose(as_sitk.GetDirection(), oblique_direction())
    assert image.to_sitk().GetPixelID() == sitk.sitkFloat32


def test_to_sitk_rejects_other_shape() -> None:
    image = image_from_array(np.zeros((2, 3, 4)))
    with pytest.raises(InputError, match=r"array shape \(2, 3, 5\) does not match the image shape \(2, 3, 4\)"):
        image.to_sitk(np.zeros((2, 3, 5), np.uint8))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"array": np.zeros(5)}, "must be 2-D .* or 3-D .*got 1-D"),
        ({"array": np.zeros((2, 2, 2, 2))}, "got 4-D"),
        ({"array": np.array([["a", "b"], ["c", "d"]])}, "real numeric dtype, got <U1"),
        ({"array": np.zeros((2, 2), dtype=object)}, "real numeric dtype, got object"),
        ({"array": np.zeros((2, 2), dtype=np.complex64)}, "real numeric dtype, got complex64"),
        ({"array": np.zeros((0, 3, 4))}, "zero-size axis"),
        ({"array": np.array([[np.nan, 1.0], [np.inf, 2.0]])}, "image contains 2 NaN/Inf voxels"),
        ({"array": np.zeros((2, 2, 2)), "spacing": (1.0, 0.0, 1.0)}, "spacing must be positive"),
        ({"array": np.zeros((2, 2, 2)), "spacing": (1.0, -2.0, 1.0)}, "spacing must be positive"),
        ({"array": np.zeros((2, 2, 2)), "spacing": (1.0, np.nan, 1.0)}, "spacing must be finite"),
        ({"array": np.zeros((2, 2, 2)), "spacing": (1.0, 1.0)}, r"spacing must have 3 values \(x, y, z\)"),
        ({"array": np.zeros((2, 2, 2)), "origin": (0.0, np.inf, 0.0)}, "origin must be finite"),
        ({"array": np.zeros((2, 2, 2)), "direction": (1.0, 0.0, 0.0, 1.0)}, "direction must have 9 values"),
        ({"array": np.zeros((2, 2, 2)), "direction": (2.0, 0, 0, 0, 1, 0, 0, 0, 1)}, "must be an orthonormal"),
        ({"array": np.zeros((2, 2, 2)), "direction": (1.0, 1, 0, 0, 1, 0, 0, 0, 1)}, "must be an orthonormal"),
        ({"array": np.zeros((2, 2, 2)), "modality": "US"}, "unknown modality 'US'"),
    ],
)
def test_image_from_array_rejects_bad_input(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(InputError, match=match):
        image_from_array(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- writing


def test_write_image_rejects_unsupported_extension(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"must end in \.nrrd, \.nii, \.nii\.gz, \.mha"):
        write_image(tmp_path / "out.png", image_from_array(np.zeros((2, 2, 2))))
    assert list(tmp_path.iterdir()) == []


def test_write_image_rejects_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="output folder does not exist"):
        write_image(tmp_path / "no" / "such" / "out.nrrd", image_from_array(np.zeros((2, 2, 2))))


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "out.nrrd"
    write_image(path, image_from_array(np.ones((2, 2, 2))))
    before = path.read_bytes()

    def half_write(image: sitk.Image, filename: str, *args: object, **kwargs: object) -> None:
        Path(filename).write_bytes(b"NRRD0004\nhalf")
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", half_write)
    with pytest.raises(InputError, match=r"could not write image .*out\.nrrd: disk full"):
        write_image(path, image_from_array(np.zeros((2, 2, 2))))

    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.nrrd"]
