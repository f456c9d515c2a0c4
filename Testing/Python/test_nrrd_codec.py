"""The in-memory NRRD codec: exact round trips, agreement with SimpleITK (ITK's own
NRRD reader and writer), and strict refusal of malformed or oversized files."""

from __future__ import annotations

import gzip
import zlib

import numpy as np
import pytest
import SimpleITK as sitk

from medsegr.io.nrrd_codec import NrrdError, NrrdTooLarge, decode_nrrd, encode_nrrd
from server_harness import oblique_volume

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.uint8, np.int32,
                                   np.uint16, np.int8, np.int64, bool])
@pytest.mark.parametrize("encoding", ["gzip", "raw"])
def test_round_trip_is_exact(dtype, encoding):
    arr, spacing, origin, direction = oblique_volume((5, 7, 9))
    data = (arr > 100) if dtype is bool else (arr * 3).astype(dtype)
    out, sp, org, dirs = decode_nrrd(encode_nrrd(data, spacing, origin, direction, encoding=encoding))
    expected = data.astype(np.uint8) if dtype is bool else data
    assert out.dtype == expected.dtype and out.shape == data.shape
    assert np.array_equal(out, expected)
    assert sp == spacing and org == origin and dirs == direction  # bit-exact geometry
    assert out.flags.writeable


def test_round_trip_is_exact_for_a_direction_orthonormal_only_to_float32():
    arr, spacing, origin, direction = oblique_volume((2, 3, 4))
    rough = tuple(float(v) for v in np.asarray(direction, np.float32))  # as from a float32 matrix
    spacing = (0.7000000000000001, 1.1, 2.9999999)
    _, sp, org, dirs = decode_nrrd(encode_nrrd(arr, spacing, origin, rough))
    assert sp == spacing and dirs == rough and org == origin


def test_a_file_edited_by_another_tool_decodes_by_its_space_directions():
    data = encode_nrrd(np.zeros((1, 2, 2), np.uint8), (1.0, 1.0, 1.0), encoding="raw")
    edited = data.replace(b"space directions: (1.0,0.0,0.0)", b"space directions: (2.0,0.0,0.0)")
    _, sp, _, _ = decode_nrrd(edited)
    assert sp == (2.0, 1.0, 1.0)  # the stale exact values are ignored


def test_itk_reads_what_we_write_and_we_read_what_itk_writes(tmp_path):
    arr, spacing, origin, direction = oblique_volume((4, 6, 8), seed=3)
    ours = tmp_path / "ours.nrrd"
    ours.write_bytes(encode_nrrd(arr, spacing, origin, direction))
    image = sitk.ReadImage(str(ours))
    assert np.array_equal(sitk.GetArrayFromImage(image), arr)
    assert np.allclose(image.GetSpacing(), spacing) and np.allclose(image.GetOrigin(), origin)
    assert np.allclose(image.GetDirection(), direction)

    theirs = tmp_path / "theirs.nrrd"
    sitk.WriteImage(image, str(theirs), useCompression=True)  # ITK's writer, gzip
    out, sp, org, dirs = decode_nrrd(theirs.read_bytes())
    assert np.array_equal(out, arr)
    assert np.allclose(sp, spacing, atol=1e-12) and np.allclose(org, origin)
    assert np.allclose(dirs, direction, atol=1e-12)


def test_ras_space_big_endian_and_2d_files():
    payload = np.arange(6, dtype=">i2").tobytes()
    header = ("NRRD0004\ntype: short\ndimension: 3\nspace: right-anterior-superior\n"
              "sizes: 3 2 1\nspace directions: (2,0,0) (0,3,0) (0,0,4)\nendian: big\n"
              "encoding: raw\nspace origin: (10,20,30)\n\n").encode()
    out, sp, org, dirs = decode_nrrd(header + payload)
    assert out.shape == (1, 2, 3) and out.dtype == np.int16 and out.dtype.isnative
    assert out.ravel().tolist() == list(range(6))
    assert sp == (2.0, 3.0, 4.0) and org == (-10.0, -20.0, 30.0)
    assert dirs == (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    flat = b"NRRD0001\ntype: uchar\ndimension: 2\nsizes: 2 2\nspacings: 0.5 0.25\nencoding: gzip\n\n"
    out, sp, _, dirs = decode_nrrd(flat + gzip.compress(bytes([1, 2, 3, 4])))
    assert out.shape == (1, 2, 2) and sp == (0.5, 0.25, 1.0) and dirs == IDENTITY


def _header(**fields: str) -> bytes:
    base = {"type": "float", "dimension": "3", "space": "left-posterior-superior",
            "sizes": "2 2 2", "endian": "little", "encoding": "raw"}
    base.update(fields)
    lines = ["NRRD0004"] + [f"{k}: {v}" for k, v in base.items() if v is not None]
    return ("\n".join(lines) + "\n\n").encode()


DATA = np.zeros(8, np.float32).tobytes()


@pytest.mark.parametrize("data, match", [
    (b"P5 not an nrrd", "not an NRRD"),
    (b"NRRD0009\ntype: float\n\n", "unsupported NRRD version"),
    (b"NRRD0004\ntype: float\nsizes: 2 2 2\n", "not terminated"),
    (b"NRRD0004\n" + b"# x" * 30000, "no end of the NRRD header"),
    (_header(sizes="2 2") + DATA, "sizes"),
    (_header(sizes="2 -2 2") + DATA, "positive"),
    (_header(sizes="2 two 2") + DATA, "integers"),
    (_header(dimension="4", sizes="2 2 2 1") + DATA, "dimension 4"),
    (_header(type="complex") + DATA, "unsupported NRRD type"),
    (_header(endian=None) + DATA, "no 'endian'"),
    (_header(encoding="bzip2") + DATA, "unsupported NRRD encoding"),
    (_header(encoding=None) + DATA, "no 'encoding'"),
    (_header() + DATA[:-4], "declares"),
    (_header() + DATA + b"xx", "declares"),
    (_header(**{"data file": "x.raw"}), "detached"),
    (_header(kinds="vector domain domain") + DATA, "scalar"),
    (_header(space="scanner-xyz") + DATA, "unsupported NRRD space"),
    (_header(**{"space directions": "(1,0,0) (0,1,0)"}) + DATA, "3 vectors"),
    (_header(**{"space directions": "(1,0,0) (0,0,0) (0,0,1)"}) + DATA, "zero-length"),
    (_header(**{"space directions": "(1,0,0) (0,nan,0) (0,0,1)"}) + DATA, "finite"),
    (_header(**{"space origin": "(1,2)"}) + DATA, "space origin"),
    (b"NRRD0004\ntype: float\ntype: float\n\n", "twice"),
    (b"NRRD0004\nthis line has no colon\n\n", "malformed NRRD header line"),
    (_header(encoding="gzip") + b"\x1f\x8b garbage", "corrupt"),
    (_header(encoding="gzip") + gzip.compress(DATA)[:-12], "truncated"),
    (_header(encoding="gzip") + gzip.compress(DATA + DATA), "more than"),
    (_header(encoding="gzip") + gzip.compress(DATA[:16]), "holds 16 bytes"),
    (_header(encoding="gzip") + gzip.compress(DATA) + b"junk", "unexpected bytes"),
])
def test_malformed_files_are_refused_with_a_reason(data, match):
    with pytest.raises(NrrdError, match=match):
        decode_nrrd(data)


def test_huge_declared_sizes_are_refused_before_any_allocation():
    header = _header(sizes="100000 100000 100000", encoding="gzip")
    with pytest.raises(NrrdTooLarge, match="1,000,000,000,000,000 voxels"):
        decode_nrrd(header + gzip.compress(b"\0" * 1000))
    with pytest.raises(NrrdTooLarge):
        decode_nrrd(_header(sizes="64 64 64") + b"\0" * (64**3 * 4), max_voxels=64**3 - 1)
    # a gzip bomb (64 MiB of zeros in ~64 KiB) is never inflated beyond the declared size
    bomb = zlib.compress(b"\0" * (64 << 20), 9)
    with pytest.raises(NrrdError, match="more than"):
        decode_nrrd(_header(encoding="gzip", sizes="2 2 2") + bomb)


def test_encode_refuses_what_it_cannot_write():
    with pytest.raises(NrrdError, match="3-D"):
        encode_nrrd(np.zeros((2, 2)))
    with pytest.raises(NrrdError, match="dtype"):
        encode_nrrd(np.zeros((1, 2, 2), dtype=np.complex64))
    with pytest.raises(NrrdError, match="positive"):
        encode_nrrd(np.zeros((1, 2, 2)), spacing=(1, 0, 1))
    with pytest.raises(NrrdError, match="finite"):
        encode_nrrd(np.zeros((1, 2, 2)), origin=(0, float("inf"), 0))
    with pytest.raises(NrrdError, match="9 values"):
        encode_nrrd(np.zeros((1, 2, 2)), direction=(1, 0, 0))
