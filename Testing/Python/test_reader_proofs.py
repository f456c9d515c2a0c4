"""Every reader proves its data: real files in real formats, written under tmp_path and
then damaged, are refused with a one-line reason naming the file (and, for data shorter
than its header says, both byte counts); intact files still read with the right voxels.
Also: gzip data of many members is inflated in linear work, the NRRD header alone gives
the decoded size, and intensity normalisation stays within twice the volume's memory."""

from __future__ import annotations

import gzip
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import bad_inputs
from medsegr.errors import InputError
from medsegr.imaging.intensity import CT_WINDOWS, normalise
from medsegr.io import nrrd_codec
from medsegr.io.images import load_image
from medsegr.io.limits import ImageLimits
from medsegr.io.nrrd_codec import GzipStreamError, NrrdTooLarge, decode_nrrd, inflate_gzip, nrrd_info

VOLUME = (np.arange(6 * 16 * 16).reshape(6, 16, 16) % 200 + 1).astype(np.int16)
#: VOLUME's voxel data in bytes (16 x 16 x 6 x 2)
VOLUME_BYTES = VOLUME.nbytes


def write_volume(path: Path, compress: bool = False) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(VOLUME), str(path), useCompression=compress)
    return path


def refused(path: Path, *words: str) -> str:
    with pytest.raises(InputError) as caught:
        load_image(path)
    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message, message
    for word in words:
        assert word in message, message
    return message


def patched_nifti(tmp_path: Path, name: str, fmt: str, offset: int, value: float) -> Path:
    data = bytearray(write_volume(tmp_path / "good.nii").read_bytes())
    struct.pack_into("<" + fmt, data, offset, value)
    path = tmp_path / name
    path.write_bytes(bytes(data))
    return path


# --------------------------------------------------------------------------- NIfTI


def test_an_intact_nifti_reads_plain_and_gzip(tmp_path):
    for name in ("good.nii", "good.nii.gz"):
        image = load_image(write_volume(tmp_path / name, compress=name.endswith(".gz")))
        assert np.array_equal(image.array, VOLUME.astype(np.float32))


@pytest.mark.parametrize("gzipped", [False, True], ids=["nii", "nii.gz"])
def test_a_nifti_shorter_than_its_header_is_refused_with_both_byte_counts(tmp_path, gzipped):
    whole = write_volume(tmp_path / "whole.nii").read_bytes()
    cut = whole[:352 + VOLUME_BYTES // 2]
    path = tmp_path / ("short.nii.gz" if gzipped else "short.nii")
    path.write_bytes(gzip.compress(cut) if gzipped else cut)
    refused(path, "truncated", f"{VOLUME_BYTES:,} bytes", f"holds {VOLUME_BYTES // 2:,}")


def test_a_nifti_with_trailing_bytes_still_reads(tmp_path):
    path = tmp_path / "longer.nii"
    path.write_bytes(write_volume(tmp_path / "whole.nii").read_bytes() + b"\0" * 100)
    assert np.array_equal(load_image(path).array, VOLUME.astype(np.float32))


@pytest.mark.parametrize("name, fmt, offset, value, words", [
    ("negdim.nii", "h", 42, -16, ("dim[1] is -16",)),
    ("rank.nii", "h", 40, 9, ("dim[0] is 9",)),
    ("sizeof.nii", "i", 0, 349, ("sizeof_hdr is 349", "348", "540")),
    ("nanoffset.nii", "f", 108, float("nan"), ("vox_offset", "finite")),
    ("infoffset.nii", "f", 108, float("inf"), ("vox_offset", "finite")),
    ("farOffset.nii", "f", 108, 1e9, ("truncated", "from byte 1,000,000,000")),
    ("negoffset.nii", "f", 108, -4.0, ("vox_offset", "negative")),
    ("nanslope.nii", "f", 112, float("nan"), ("scl_slope",)),
    ("infinter.nii", "f", 116, float("-inf"), ("scl_inter",)),
    ("nanspacing.nii", "f", 80, float("nan"), ("pixdim",)),
    ("datatype.nii", "h", 70, 999, ("datatype 999",)),
    ("zero.nii", "h", 44, 0, ("size is zero",)),
])
def test_bad_nifti_header_fields_are_refused(tmp_path, name, fmt, offset, value, words):
    refused(patched_nifti(tmp_path, name, fmt, offset, value), *words)


def test_a_nan_sform_in_use_is_refused(tmp_path):
    data = bytearray(write_volume(tmp_path / "good.nii").read_bytes())
    assert struct.unpack_from("<h", data, 254)[0] > 0  # SimpleITK writes an sform
    struct.pack_into("<f", data, 292, float("nan"))  # srow_x[3], the x offset
    path = tmp_path / "sform.nii"
    path.write_bytes(bytes(data))
    refused(path, "srow")


def test_a_big_endian_nifti_reads(tmp_path):
    nibabel = pytest.importorskip("nibabel")
    header = nibabel.Nifti1Header().as_byteswapped(">")
    path = tmp_path / "big.nii"
    nibabel.save(nibabel.Nifti1Image(VOLUME.T.copy(), np.eye(4), header=header), str(path))
    assert path.read_bytes()[:4] == struct.pack(">i", 348)
    assert np.array_equal(load_image(path).array, VOLUME.astype(np.float32))


def test_a_nifti_gz_of_many_members_reads(tmp_path):
    whole = write_volume(tmp_path / "whole.nii").read_bytes()
    path = tmp_path / "members.nii.gz"
    path.write_bytes(gzip.compress(whole[:1000]) + gzip.compress(b"") * 5000
                     + gzip.compress(whole[1000:]))
    assert np.array_equal(load_image(path).array, VOLUME.astype(np.float32))


# --------------------------------------------------------------------------- NRRD and MetaImage


def test_short_nrrd_data_raw_and_gzip_name_both_counts(tmp_path):
    raw = write_volume(tmp_path / "raw.nrrd").read_bytes()
    start = raw.index(b"\n\n") + 2
    (tmp_path / "short.nrrd").write_bytes(raw[:start + 1000])
    refused(tmp_path / "short.nrrd", f"{VOLUME_BYTES:,} bytes", "holds 1,000")
    header = raw[:start].replace(b"encoding: raw", b"encoding: gzip")
    (tmp_path / "shortgz.nrrd").write_bytes(header + gzip.compress(raw[start:start + 1000]))
    refused(tmp_path / "shortgz.nrrd", f"{VOLUME_BYTES:,} bytes", "holds 1,000")


@pytest.mark.parametrize("field, value, words", [
    ("space origin", "(0,nan,0)", "space origin"),
    ("space directions", "(1,0,0) (0,inf,0) (0,0,1)", "space directions"),
])
def test_non_finite_nrrd_geometry_is_refused(tmp_path, field, value, words):
    raw = write_volume(tmp_path / "raw.nrrd").read_bytes()
    lines = [line for line in raw[:raw.index(b"\n\n")].decode().split("\n")
             if not line.startswith(field + ":")]
    path = tmp_path / "geometry.nrrd"
    path.write_bytes(("\n".join(lines) + f"\n{field}: {value}\n\n").encode()
                     + raw[raw.index(b"\n\n") + 2:])
    refused(path, words, "finite")


def test_nrrd_spacings_may_be_nan_only_on_a_non_spatial_axis(tmp_path):
    header = b"NRRD0004\ntype: uchar\ndimension: 3\nsizes: 4 4 2\nencoding: raw\n"
    good = bad_inputs.write(tmp_path / "good.nrrd", header + b"spacings: 1 1 2\n\n" + b"\1" * 32)
    assert load_image(good).spacing == (1.0, 1.0, 2.0)
    bad = bad_inputs.write(tmp_path / "bad.nrrd", header + b"spacings: 1 nan 2\n\n" + b"\1" * 32)
    refused(bad, "spacings", "finite")


def test_a_vector_nrrd_written_by_simpleitk_still_reads(tmp_path):
    rgb = np.stack([VOLUME, VOLUME, VOLUME], axis=-1).astype(np.uint8)
    path = tmp_path / "rgb.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(path))
    assert load_image(path).shape == VOLUME.shape


def test_metaimage_headers_and_data_are_proven(tmp_path):
    good = write_volume(tmp_path / "good.mha")
    assert np.array_equal(load_image(good).array, VOLUME.astype(np.float32))
    data = good.read_bytes()
    (tmp_path / "short.mha").write_bytes(data[:-500])
    refused(tmp_path / "short.mha", "truncated", f"{VOLUME_BYTES:,} bytes",
            f"holds {VOLUME_BYTES - 500:,}")
    text = data.replace(b"ElementSpacing = 1 1 1", b"ElementSpacing = 1 nan 1")
    assert text != data
    (tmp_path / "nan.mha").write_bytes(text)
    refused(tmp_path / "nan.mha", "ElementSpacing", "finite")
    packed = write_volume(tmp_path / "packed.mha", compress=True)
    assert np.array_equal(load_image(packed).array, VOLUME.astype(np.float32))
    (tmp_path / "cut.mha").write_bytes(packed.read_bytes()[:-40])
    refused(tmp_path / "cut.mha", "truncated")


# --------------------------------------------------------------------------- DICOM


def ct_small() -> Path:
    pydicom_data = pytest.importorskip("pydicom.data")
    return Path(pydicom_data.get_testdata_file("CT_small.dcm"))


def pixel_data_at(data: bytes) -> int:
    at = data.rfind(b"\xe0\x7f\x10\x00OW\0\0")
    assert at > 0
    return at


def test_an_intact_dicom_file_reads_with_its_voxels(tmp_path):
    import pydicom

    source = ct_small()
    expected = pydicom.dcmread(source).pixel_array.astype(np.float32)
    image = load_image(source)
    slope_intercept = image.array[0] - expected  # GDCM applies the rescale
    assert np.ptp(slope_intercept) == 0


@pytest.mark.parametrize("name, shape", [("MR_small_RLE.dcm", (1, 64, 64)),
                                         ("JPEG2000.dcm", (1, 1024, 256)),
                                         ("MR_small_bigendian.dcm", (1, 64, 64)),
                                         ("MR_small_implicit.dcm", (1, 64, 64)),
                                         ("rtdose.dcm", (15, 10, 10))])
def test_compressed_big_endian_implicit_and_multiframe_dicom_files_still_read(name, shape):
    pydicom = pytest.importorskip("pydicom")
    path = Path(pydicom.__file__).parent / "data" / "test_files" / name
    if not path.is_file():
        pytest.skip(f"{name} is not bundled with this pydicom")
    assert load_image(path).shape == shape


def test_a_dicom_file_with_half_its_pixel_data_is_refused(tmp_path):
    data = ct_small().read_bytes()
    at = pixel_data_at(data)
    length = struct.unpack_from("<I", data, at + 8)[0]
    assert length == 128 * 128 * 2
    cut = bad_inputs.write(tmp_path / "cut.dcm", data[:at + 12 + length // 2])
    refused(cut, "truncated", f"{length:,} bytes of pixel data", f"holds {length // 2:,}")
    shortened = bytearray(data[:at + 12 + length // 2])
    struct.pack_into("<I", shortened, at + 8, length // 2)  # a consistent, shorter element
    short = bad_inputs.write(tmp_path / "short.dcm", bytes(shortened))
    refused(short, "truncated", f"{length:,} bytes of pixel data", f"holds {length // 2:,}")


def test_a_dicom_with_a_nan_pixel_spacing_is_refused(tmp_path):
    data = ct_small().read_bytes()
    at = data.find(b"\x28\x00\x30\x00DS")
    assert at > 0
    size = struct.unpack_from("<H", data, at + 6)[0]
    value = b"nan\\nan".ljust(size, b" ")[:size]
    path = bad_inputs.write(tmp_path / "spacing.dcm", data[:at + 8] + value + data[at + 8 + size:])
    refused(path, "PixelSpacing", "finite")


def test_a_dicom_series_with_one_cut_file_is_refused(tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    for k in range(3):
        bad_inputs.dicom_file(series / f"s{k}.dcm", number=k + 1)
    image = load_image(series)
    assert image.shape == (3, 8, 8)
    data = (series / "s1.dcm").read_bytes()
    (series / "s1.dcm").write_bytes(data[:-64])
    refused(series / "s1.dcm", "truncated", "128 bytes of pixel data", "holds 64")
    with pytest.raises(InputError, match="s1.dcm: truncated"):
        load_image(series)


# --------------------------------------------------------------------------- pictures


def test_a_cut_jpeg_and_a_short_bmp_are_refused(tmp_path):
    good = bad_inputs.good_picture(tmp_path / "good.jpg")
    assert load_image(good).shape == (1, 24, 32)
    data = good.read_bytes()
    refused(bad_inputs.write(tmp_path / "cut.jpg", data[:len(data) // 2]), "truncated JPEG")
    bmp = bad_inputs.good_picture(tmp_path / "good.bmp")
    assert load_image(bmp).shape == (1, 24, 32)
    refused(bad_inputs.write(tmp_path / "short.bmp", bmp.read_bytes()[:-100]), "truncated",
            "holds")


def test_a_thumbnail_end_marker_does_not_hide_a_cut_main_scan(tmp_path):
    """The check walks the marker segments: a complete thumbnail JPEG inside an APP1
    segment (scan and end marker of its own) is skipped."""
    good = bad_inputs.good_picture(tmp_path / "good.jpg").read_bytes()
    app1 = b"\xff\xe1" + (len(good) + 8).to_bytes(2, "big") + b"Exif\0\0" + good
    full = good[:2] + app1 + good[2:]
    assert load_image(bad_inputs.write(tmp_path / "exif.jpg", full)).shape == (1, 24, 32)
    refused(bad_inputs.write(tmp_path / "cut.jpg", full[:-200]), "truncated JPEG")


# --------------------------------------------------------------------------- gzip members


class CountingZlib:
    """zlib, counting the input bytes handed to every decompressor."""

    MAX_WBITS = zlib.MAX_WBITS
    error = zlib.error

    def __init__(self) -> None:
        self.fed = 0
        self.decompressors = 0

    def decompressobj(self, wbits: int) -> object:
        counter = self
        inner = zlib.decompressobj(wbits)
        self.decompressors += 1

        class Counted:
            def decompress(self, data: bytes, max_length: int = 0) -> bytes:
                counter.fed += len(data)
                return inner.decompress(data, max_length)

            def __getattr__(self, name: str) -> object:
                return getattr(inner, name)

        return Counted()


def many_members(members: int, data: bytes) -> bytes:
    empty = gzip.compress(b"", mtime=0)
    return gzip.compress(data[:100], mtime=0) + empty * members + gzip.compress(data[100:], mtime=0)


def test_inflating_many_gzip_members_is_linear_work(monkeypatch):
    """Each member is fed only its own bytes (and a small first slice): the input fed
    to all decompressors together is a small multiple of the input, not its square."""
    counting = CountingZlib()
    monkeypatch.setattr(nrrd_codec, "zlib", counting)
    data = bytes(range(256)) * 16
    payload = many_members(20_000, data)
    assert b"".join(inflate_gzip([payload], len(data))) == data
    assert counting.decompressors == 20_002
    assert counting.fed <= 4 * len(payload), (counting.fed, len(payload))


@pytest.mark.timeout(120)
def test_200000_empty_members_decode_and_load(tmp_path):
    header = bad_inputs.nrrd_header((16, 16, 16), "uint8", "gzip")
    data = bytes(range(256)) * 16
    body = header + many_members(200_000, data)
    assert len(body) > 3 * 1024 * 1024
    array, *_ = decode_nrrd(body)
    assert array.tobytes() == data
    path = bad_inputs.write(tmp_path / "members.nrrd", body)
    assert load_image(path).array.ravel().tolist() == list(data)


def test_gzip_stream_errors_say_what_is_wrong():
    data = gzip.compress(b"x" * 1000)
    kinds = {}
    for name, payload in {"truncated": data[:-10], "corrupt": b"\x1f\x8b" + b"\xaa" * 50,
                          "trailing": data + b"junk", "too_long": data}.items():
        with pytest.raises(GzipStreamError) as caught:
            b"".join(inflate_gzip([payload], 999 if name == "too_long" else 1000))
        kinds[name] = caught.value.kind
    assert kinds == {name: name for name in kinds}
    assert b"".join(inflate_gzip([data[:7], data[7:], b"\0" * 9], 1000)) == b"x" * 1000


# --------------------------------------------------------------------------- NRRD size first


def test_nrrd_info_gives_the_decoded_size_from_the_header_alone():
    body = nrrd_codec.encode_nrrd(np.zeros((5, 6, 7), np.int16))
    head = body[:body.index(b"\n\n") + 2]
    info = nrrd_info(head)
    assert info.sizes == (7, 6, 5) and info.voxels == 210
    assert info.decoded_bytes == 420 and info.float32_bytes == 840
    assert info.encoding == "gzip" and info.data_offset == len(head)
    huge = bad_inputs.nrrd_header((4096, 4096, 4096), "uint8", "gzip")
    with pytest.raises(NrrdTooLarge, match="max_voxels"):
        nrrd_info(huge, limits=ImageLimits())


# --------------------------------------------------------------------------- normalisation


def reference_normalise(array: np.ndarray, modality: str, window: str | None = None) -> np.ndarray:
    """The plain numpy formula (whole-volume temporaries)."""
    data = np.asarray(array, dtype=np.float32)
    if modality == "CT":
        level, width = CT_WINDOWS[window or "wide"]
        out = (data - (level - width / 2.0)) / width
    else:
        values = data[data != 0] if np.any(data != 0) else data.ravel()
        low, high = np.percentile(values, [0.5, 99.5]) if values.size else (0.0, 1.0)
        if high <= low:
            high = low + 1.0
        out = (data - low) / (high - low)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def volumes() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    sparse = rng.integers(-1024, 3000, (5, 300, 301)).astype(np.int16)
    sparse[rng.random(sparse.shape) < 0.5] = 0
    return [rng.normal(100, 50, (7, 33, 65)).astype(np.float32), sparse,
            np.zeros((2, 3, 4), np.float32), np.full((2, 3, 4), 7, np.float32),
            rng.normal(0, 1, (3, 700, 600)), rng.normal(5, 1, (30, 40, 50))[:, ::2, ::3]]


@pytest.mark.parametrize("modality, window", [("MR", None), ("OT", "auto"), ("CT", None),
                                              ("CT", "lung")])
def test_normalise_is_bit_identical_to_the_plain_formula(modality, window):
    for array in volumes():
        out = normalise(array, modality, window)
        assert out.dtype == np.float32 and out.shape == array.shape
        assert np.array_equal(out, reference_normalise(array, modality, window))


@pytest.mark.parametrize("modality", ["MR", "CT"])
def test_normalise_peak_memory_is_at_most_twice_the_float32_volume(modality):
    volume = np.random.default_rng(1).normal(100, 50, (32, 512, 512)).astype(np.float32)
    volume[:, :40] = 0
    slack = 32 * 1024 * 1024  # chunk-sized temporaries
    tracemalloc.start()
    try:
        normalise(volume, modality)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        reference_normalise(volume, modality)
        _, reference_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= 2 * volume.nbytes + slack, peak / volume.nbytes
    assert reference_peak > 2 * volume.nbytes + slack  # the measurement sees numpy's memory
