"""Images kept in their stored 8- or 16-bit integer type (``stored_type=True``, what the
command line and the server read with): the same values, answers and measurements as the
float32 image, a quarter or half of its memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import force_seg
from medsegr.errors import InputError
from medsegr.imaging.intensity import normalise
from medsegr.io.images import STORED_TYPES, MedicalImage, image_from_array, load_image
from medsegr.io.nrrd_codec import encode_nrrd, nrrd_info
from medsegr.server.uploads import session_bytes


def _ct_int16() -> np.ndarray:
    z, y, x = np.mgrid[0:6, 0:48, 0:64]
    body = ((y - 24) / 20.0) ** 2 + ((x - 32) / 28.0) ** 2 <= 1
    organ = ((z - 3) / 2.5) ** 2 + ((y - 22) / 8.0) ** 2 + ((x - 40) / 9.0) ** 2 <= 1
    hu = np.where(body, 40, -1000) + np.where(organ, 180, 0)
    return (hu + np.random.default_rng(3).integers(-20, 20, hu.shape)).astype(np.int16)


def _write(path: Path, array: np.ndarray) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((-20.0, 10.0, 30.0))
    sitk.WriteImage(image, str(path))
    return path


@pytest.mark.parametrize(("suffix", "dtype"), [(".nrrd", np.int16), (".nii.gz", np.uint8),
                                                (".mha", np.uint16), (".nrrd", np.int8)])
def test_a_narrow_integer_file_keeps_its_type(tmp_path: Path, suffix: str, dtype: type) -> None:
    values = np.abs(_ct_int16()).astype(dtype) if dtype != np.int16 else _ct_int16()
    path = _write(tmp_path / f"volume{suffix}", values)

    kept = load_image(path, stored_type=True)
    default = load_image(path)

    assert kept.array.dtype == np.dtype(dtype) and kept.array.dtype.isnative
    assert default.array.dtype == np.float32
    np.testing.assert_array_equal(kept.array, default.array)
    assert kept.array.nbytes == default.array.nbytes * np.dtype(dtype).itemsize // 4
    assert (kept.spacing, kept.origin, kept.modality) == (default.spacing, default.origin,
                                                          default.modality)


def test_a_grey_png_keeps_uint8(tmp_path: Path) -> None:
    grey = (np.arange(40 * 30) % 256).astype(np.uint8).reshape(30, 40)
    path = tmp_path / "picture.png"
    sitk.WriteImage(sitk.GetImageFromArray(grey), str(path))

    image = load_image(path, stored_type=True)

    assert image.array.dtype == np.uint8 and image.shape == (1, 30, 40)
    np.testing.assert_array_equal(image.array[0], grey)


@pytest.mark.parametrize("dtype", [np.int32, np.uint32, np.float64, np.int64])
def test_wider_types_become_float32(tmp_path: Path, dtype: type) -> None:
    values = _ct_int16() + (1024 if np.dtype(dtype).kind == "u" else 0)
    path = _write(tmp_path / "wide.nrrd", values.astype(dtype))

    image = load_image(path, stored_type=True)

    assert image.array.dtype == np.float32
    np.testing.assert_array_equal(image.array, values.astype(np.float32))


def test_a_big_endian_array_is_kept_in_native_order() -> None:
    values = _ct_int16().astype(">i2")

    image = image_from_array(values, modality="CT", stored_type=True)

    assert image.array.dtype == np.int16 and image.array.dtype.isnative
    np.testing.assert_array_equal(image.array, _ct_int16())


def test_the_image_refuses_other_types() -> None:
    assert {t.name for t in STORED_TYPES} == {"uint8", "int8", "uint16", "int16"}
    with pytest.raises(InputError, match="must be float32, uint8, int8, uint16 or int16, got int32"):
        MedicalImage(array=np.zeros((1, 4, 4), np.int32), spacing=(1.0, 1.0, 1.0),
                     origin=(0.0, 0.0, 0.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
                     modality="CT", source="<array>", is_2d=True)


@pytest.mark.parametrize(("modality", "window"), [("CT", None), ("CT", "bone"), ("MR", None)])
def test_normalisation_is_the_same_bit_for_bit(modality: str, window: str | None) -> None:
    values = _ct_int16() if modality == "CT" else np.abs(_ct_int16()).astype(np.uint16)

    narrow = normalise(values, modality, window)
    wide = normalise(values.astype(np.float32), modality, window)

    assert narrow.dtype == wide.dtype == np.float32
    np.testing.assert_array_equal(narrow, wide)


def test_the_engine_answers_and_measures_alike_and_holds_less(tiny_pipeline) -> None:
    kwargs = {"spacing": (0.7, 0.8, 2.5), "origin": (-20.0, 10.0, 30.0), "modality": "CT"}
    narrow = image_from_array(_ct_int16(), stored_type=True, **kwargs)
    wide = image_from_array(_ct_int16(), **kwargs)
    assert narrow.array.dtype == np.int16 and wide.array.dtype == np.float32

    answers, sizes = [], []
    for image in (narrow, wide):
        session = tiny_pipeline.new_session(image)
        with force_seg(tiny_pipeline.model, {1}):
            answers.append(session.ask("Segment the organ.", slice_index=3))
        sizes.append(session.memory_bytes() - sum(
            t.nbytes for t in session._embeddings.values()))

    (a, b) = answers
    assert a.text == b.text and len(a.segments) == len(b.segments) >= 1
    for sa, sb in zip(a.segments, b.segments, strict=True):
        np.testing.assert_array_equal(sa.mask, sb.mask)
        assert sa.measured == sb.measured
    voxels = narrow.array.size
    assert sizes[1] - sizes[0] == 2 * voxels  # int16 instead of float32: 2 bytes a voxel less


@pytest.mark.parametrize(("dtype", "per_voxel"), [(np.uint8, 5), (np.int16, 6), (np.float32, 8),
                                                   (np.float64, 8), (np.int32, 8)])
def test_the_server_counts_the_stored_type_before_decoding(dtype: type, per_voxel: int) -> None:
    data = encode_nrrd(np.zeros((3, 4, 5), dtype=dtype))

    assert session_bytes(nrrd_info(data)) == 3 * 4 * 5 * per_voxel
