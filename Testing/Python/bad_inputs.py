"""A corpus of bad inputs to ``medsegr ask`` (and the engine server): crafted image files
(memory bombs among them), questions, option values and output folders.

Every case builds its input at test time under a test's ``tmp_path``; files stay small
on disk (the largest bomb is about 1 MB). Each case has an ``id`` and the words its
one-line reason must contain. ``test_cli_bad_input.py`` runs them through the CLI,
``test_server_bad_input.py`` through the server's upload and ask endpoints.
"""

from __future__ import annotations

import functools
import gzip
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

QUESTION = "Where is the liver?"
MIB = 1024 * 1024


# --------------------------------------------------------------------------- builders


def nrrd_header(sizes: tuple[int, ...], type_name: str = "uint8", encoding: str = "raw",
                extra: str = "") -> bytes:
    lines = ["NRRD0004", f"type: {type_name}", f"dimension: {len(sizes)}",
             "sizes: " + " ".join(str(s) for s in sizes), f"encoding: {encoding}",
             "endian: little"] + (["space: left-posterior-superior"] if len(sizes) == 3 else [])
    return ("\n".join(lines) + "\n" + extra + "\n").encode("ascii")


@functools.lru_cache(maxsize=4)
def _zeros_member(size: int) -> bytes:
    return gzip.compress(b"\0" * size, compresslevel=9)


def gzip_zeros(total: int, member: int = 64 * MIB) -> bytes:
    """gzip data that inflates to ``total`` zero bytes, small on disk: one compressed
    member of ``member`` zeros, repeated (concatenated members are one valid stream)."""
    count, rest = divmod(total, member)
    return _zeros_member(member) * count + (_zeros_member(rest) if rest else b"")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares ``width`` x ``height`` 8-bit grey, with one tiny IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b""))


def bmp_header_only(width: int, height: int) -> bytes:
    """A 24-bit BMP whose header declares ``width`` x ``height`` with almost no pixels."""
    pixels = b"\0" * 64
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    head = struct.pack("<2sIHHI", b"BM", 14 + len(info) + len(pixels), 0, 0, 14 + len(info))
    return head + info + pixels


def tiff_header_only(width: int, height: int) -> bytes:
    """A little-endian 8-bit grey TIFF declaring ``width`` x ``height``, one tiny strip."""
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1),
               (262, 3, 1, 1), (273, 4, 1, 8), (277, 3, 1, 1), (278, 4, 1, height),
               (279, 4, 1, 16)]
    ifd_offset = 8 + 16
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        ifd += struct.pack("<HHI", tag, kind, count) + (
            struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value))
    ifd += struct.pack("<I", 0)
    return b"II*\0" + struct.pack("<I", ifd_offset) + b"\0" * 16 + ifd


def nifti_header(dims: tuple[int, ...], datatype: int = 2, bitpix: int = 8) -> bytes:
    """A NIfTI-1 single-file header (348 bytes + 4 extension bytes) for ``dims``."""
    header = bytearray(352)
    struct.pack_into("<i", header, 0, 348)
    dim = [len(dims), *dims] + [1] * (7 - len(dims))
    struct.pack_into("<8h", header, 40, *dim)
    struct.pack_into("<hh", header, 70, datatype, bitpix)
    struct.pack_into("<8f", header, 76, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    struct.pack_into("<f", header, 108, 352.0)
    struct.pack_into("<f", header, 112, 1.0)  # scl_slope
    header[344:348] = b"n+1\0"
    return bytes(header)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def good_volume(path: Path, shape: tuple[int, int, int] = (6, 16, 16)) -> Path:
    array = np.random.default_rng(0).random(shape).astype(np.float32) * 100
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path


def good_picture(path: Path) -> Path:
    array = (np.random.default_rng(1).random((24, 32)) * 255).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path


def dicom_file(path: Path, rows: int | None = None, columns: int | None = None,
               series: str = "1.2.826.0.1.3680043.2.1125.7", number: int = 1) -> Path:
    """A small real DICOM slice; ``rows``/``columns`` patch the header's (0028,0010/0011)
    to claim a larger image than the pixel data holds."""
    image = sitk.GetImageFromArray(np.zeros((8, 8), np.int16))
    for tag, value in [("0008|0060", "CT"), ("0020|000e", series), ("0020|0013", str(number)),
                       ("0020|0032", f"0\\0\\{number}"), ("0020|0037", "1\\0\\0\\0\\1\\0"),
                       ("0008|0018", f"{series}.{number}")]:
        image.SetMetaData(tag, value)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(path))
    writer.Execute(image)
    data = bytearray(path.read_bytes())
    for element, value in ((b"\x10\x00", rows), (b"\x11\x00", columns)):
        if value is None:
            continue
        tag = b"\x28\x00" + element
        at = data.find(tag + b"US\x02\x00")
        if at >= 0:
            struct.pack_into("<H", data, at + 8, value)
        else:  # implicit VR
            at = data.find(tag + b"\x02\x00\x00\x00")
            assert at >= 0, "no Rows/Columns element found"
            struct.pack_into("<H", data, at + 8, value)
    path.write_bytes(bytes(data))
    return path


def jpeg_with_size(path: Path, width: int, height: int) -> Path:
    """A real small JPEG whose SOF header is patched to claim ``width`` x ``height``."""
    good_picture(path)
    data = bytearray(path.read_bytes())
    at = max(data.find(b"\xff\xc0"), data.find(b"\xff\xc2"))  # baseline or progressive
    assert at >= 0
    struct.pack_into(">HH", data, at + 5, height, width)
    path.write_bytes(bytes(data))
    return path


def good_nifti(path: Path) -> Path:
    """A real NIfTI-1 volume (6 x 16 x 16 int16, 3,072 bytes of voxel data from byte 352)."""
    array = (np.arange(6 * 16 * 16).reshape(6, 16, 16) % 200 + 1).astype(np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path), useCompression=False)
    return path


def nifti_patched(name: str, fmt: str, offset: int, value: float) -> Callable[[Path], Path]:
    """A real NIfTI file with one header field overwritten (little-endian ``fmt``)."""
    def make(folder: Path) -> Path:
        data = bytearray(good_nifti(folder / "good.nii").read_bytes())
        struct.pack_into("<" + fmt, data, offset, value)
        return write(folder / name, bytes(data))
    return make


def nifti_short(name: str) -> Callable[[Path], Path]:
    """A real NIfTI file holding half the voxel data its header declares (an intact
    gzip stream for ``.nii.gz``)."""
    def make(folder: Path) -> Path:
        data = good_nifti(folder / "whole.nii").read_bytes()[:352 + 1536]
        return write(folder / name, gzip.compress(data) if name.endswith(".gz") else data)
    return make


def pydicom_ct_small() -> bytes:
    """pydicom's own CT_small.dcm (128 x 128, 16 bits: 32,768 bytes of pixel data)."""
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("CT_small.dcm")).read_bytes()


def dicom_half_pixels(name: str, consistent: bool) -> Callable[[Path], Path]:
    """CT_small.dcm with half its pixel data: cut off (``consistent`` False), or with the
    Pixel Data element's length halved to match (a well-formed file that lies)."""
    def make(folder: Path) -> Path:
        data = bytearray(pydicom_ct_small())
        at = data.rfind(b"\xe0\x7f\x10\x00OW\0\0")
        length = struct.unpack_from("<I", data, at + 8)[0]
        data = data[:at + 12 + length // 2]
        if consistent:
            struct.pack_into("<I", data, at + 8, length // 2)
        return write(folder / name, bytes(data))
    return make


def gzip_empty_members(count: int) -> bytes:
    """``count`` empty gzip members (20 bytes each): nothing, many times over."""
    return gzip.compress(b"", mtime=0) * count


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class ImageCase:
    """A bad image file or folder: ``make(folder)`` returns its path."""

    id: str
    make: Callable[[Path], Path]
    words: str
    #: also send its bytes to the server's upload endpoint (files only)
    upload: bool = True


@dataclass(frozen=True)
class QuestionCase:
    id: str
    question: str
    words: str


@dataclass(frozen=True)
class OptionCase:
    """Bad option values with a good image (``picture``: a 2-D one)."""

    id: str
    args: tuple[str, ...]
    words: str
    picture: bool = False
    #: the same request to the server's ask endpoint (None: not expressible there)
    server: dict | None = None


@dataclass(frozen=True)
class OutputCase:
    """A bad ``--out``: ``make(folder)`` returns the path to pass."""

    id: str
    make: Callable[[Path], Path]
    words: str
    extra: tuple[str, ...] = field(default=())


def _nrrd(name: str, header: bytes, payload: Callable[[], bytes] | bytes = b"",
          ) -> Callable[[Path], Path]:
    return lambda folder: write(folder / name, header + (payload() if callable(payload)
                                                         else payload))


def _gz(name: str, data: bytes) -> Callable[[Path], Path]:
    return lambda folder: write(folder / name, gzip.compress(data, compresslevel=1))


def _detached(name: str, header: bytes, data_name: str,
              data: Callable[[], bytes] | bytes | None) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        if data is not None:
            write(folder / data_name, data() if callable(data) else data)
        return write(folder / name, header)
    return make


def _series(count: int, rows: int, columns: int) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        series = folder / "series"
        series.mkdir()
        for k in range(count):
            dicom_file(series / f"s{k:03d}.dcm", rows, columns, number=k + 1)
        return series
    return make


def _fifo(folder: Path) -> Path:
    path = folder / "pipe.nrrd"
    os.mkfifo(path)
    return path


def _loop(folder: Path) -> Path:
    path = folder / "loop.nrrd"
    os.symlink(path, path)
    return path


def _folder_of(files: dict[str, bytes]) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        sub = folder / "folder"
        sub.mkdir()
        for name, data in files.items():
            write(sub / name, data)
        return sub
    return make


def _nan_image(folder: Path) -> Path:
    array = np.ones((4, 8, 8), np.float32)
    array[1, 2, 3] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(array), str(folder / "nan.nrrd"))
    return folder / "nan.nrrd"


def _inf_image(folder: Path) -> Path:
    array = np.ones((4, 8, 8), np.float64)
    array[0, 0, 0] = -np.inf
    sitk.WriteImage(sitk.GetImageFromArray(array), str(folder / "inf.nrrd"))
    return folder / "inf.nrrd"


def _four_d(folder: Path) -> Path:
    series = [sitk.GetImageFromArray(np.ones((4, 8, 8), np.float32) * i) for i in range(3)]
    sitk.WriteImage(sitk.JoinSeries(series), str(folder / "four_d.nii.gz"))
    return folder / "four_d.nii.gz"


def _vector5(folder: Path) -> Path:
    image = sitk.Compose([sitk.GetImageFromArray(np.ones((4, 8, 8), np.float32))] * 5)
    sitk.WriteImage(image, str(folder / "vector5.nrrd"))
    return folder / "vector5.nrrd"


def _truncated(name: str, writer: Callable[[Path], Path], keep: float) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = writer(folder / name)
        data = path.read_bytes()
        return write(path, data[: int(len(data) * keep)])
    return make


def _big_noise_nrrd(path: Path) -> Path:
    return good_volume(path, (8, 64, 64))


def _big_noise_niigz(path: Path) -> Path:
    return good_volume(path, (8, 64, 64))


_SMALL = nrrd_header((16, 16, 16), "uint8", "gzip")

IMAGE_CASES: list[ImageCase] = [
    # memory bombs: small files declaring or inflating to huge images
    ImageCase("bomb_gzip_nrrd_1gib", _nrrd("bomb1g.nrrd", nrrd_header((1024, 1024, 1024), "uint8", "gzip"),
                                           lambda: gzip_zeros(1024 * MIB)), "max_voxels"),
    ImageCase("bomb_gzip_nrrd_8gib", _nrrd("bomb8g.nrrd", nrrd_header((2048, 2048, 2048), "uint8", "gzip"),
                                           lambda: gzip_zeros(512 * MIB)), "max_voxels"),
    ImageCase("bomb_float_nrrd_4gib", _nrrd("bomb4g.nrrd", nrrd_header((1024, 1024, 1024), "float", "gzip"),
                                            lambda: gzip_zeros(64 * MIB)), "max_voxels"),
    ImageCase("bomb_png_20000", lambda f: write(f / "huge.png", png_header_only(20000, 20000)),
              "max_side"),
    ImageCase("bomb_png_wide", lambda f: write(f / "wide.png", png_header_only(100000, 1)),
              "max_side"),
    ImageCase("bomb_raw_nrrd_voxels", _nrrd("voxels.nrrd", nrrd_header((1000, 1000, 300), "uint8")),
              "max_voxels"),
    ImageCase("bomb_bmp", lambda f: write(f / "huge.bmp", bmp_header_only(30000, 30000)),
              "max_side"),
    ImageCase("bomb_tiff", lambda f: write(f / "huge.tif", tiff_header_only(20000, 20000)),
              "max_side"),
    ImageCase("bomb_jpeg", lambda f: jpeg_with_size(f / "huge.jpg", 60000, 60000), "max_side"),
    ImageCase("bomb_raw_nrrd_side", _nrrd("side.nrrd", nrrd_header((100000, 100000, 1), "float")),
              "max_side"),
    ImageCase("bomb_raw_nrrd_2d", _nrrd("side2d.nrrd", nrrd_header((20000, 20000), "uint8")),
              "max_side"),
    ImageCase("bomb_double_bytes", _nrrd("double.nrrd", nrrd_header((512, 512, 600), "double")),
              "max_bytes"),
    ImageCase("bomb_int64_bytes", _nrrd("int64.nrrd", nrrd_header((512, 512, 600), "int64")),
              "max_bytes"),
    ImageCase("bomb_gzip_lying_header", _nrrd("lying.nrrd", _SMALL, lambda: gzip_zeros(64 * MIB)),
              "inflates past"),
    ImageCase("bomb_gzip_lying_members", _nrrd("members.nrrd", _SMALL,
                                               lambda: gzip.compress(b"\0" * 4096) + gzip_zeros(32 * MIB)),
              "inflates past"),
    ImageCase("bomb_nhdr_detached", _detached("bomb.nhdr", nrrd_header(
        (4096, 4096, 4096), "uint8", "gzip", "data file: bomb.raw.gz\n"), "bomb.raw.gz",
        lambda: gzip_zeros(16 * MIB)), "max_voxels", upload=True),
    ImageCase("bomb_nhdr_lying_gzip", _detached("lying.nhdr", nrrd_header(
        (16, 16, 16), "uint8", "gzip", "data file: lying.raw.gz\n"), "lying.raw.gz",
        lambda: gzip_zeros(64 * MIB)), "inflates past"),
    ImageCase("bomb_niigz_header", lambda f: write(f / "bomb.nii.gz", gzip.compress(
        nifti_header((2048, 2048, 2048)) + b"\0" * 4096)), "max_voxels"),
    ImageCase("bomb_niigz_lying", lambda f: write(f / "lying.nii.gz", gzip.compress(
        nifti_header((8, 8, 8))) + gzip_zeros(64 * MIB)), "inflates past"),
    ImageCase("bomb_nii_header", lambda f: write(f / "bomb.nii", nifti_header((30000, 30000, 1))
                                                 + b"\0" * 64), "max_side"),
    ImageCase("bomb_nii_float64", lambda f: write(f / "double.nii", nifti_header(
        (512, 512, 600), datatype=64, bitpix=64) + b"\0" * 64), "max_bytes"),
    ImageCase("bomb_mha", lambda f: write(f / "bomb.mha", b"ObjectType = Image\nNDims = 3\n"
                                          b"DimSize = 4096 4096 4096\nElementType = MET_UCHAR\n"
                                          b"ElementDataFile = LOCAL\n"), "max_voxels"),
    ImageCase("bomb_mhd_detached", lambda f: write(f / "bomb.mhd", b"ObjectType = Image\nNDims = 3\n"
                                                   b"DimSize = 50000 2 2\nElementType = MET_SHORT\n"
                                                   b"ElementDataFile = bomb.raw\n"), "max_side"),
    ImageCase("bomb_mha_channels", lambda f: write(f / "channels.mha", b"ObjectType = Image\n"
                                                   b"NDims = 3\nDimSize = 512 512 512\n"
                                                   b"ElementNumberOfChannels = 10\n"
                                                   b"ElementType = MET_FLOAT\n"
                                                   b"ElementDataFile = LOCAL\n"), "max_bytes"),
    ImageCase("bomb_dicom_rows", lambda f: dicom_file(f / "huge.dcm", 60000, 60000), "max_side",
              upload=True),
    ImageCase("bomb_dicom_series", _series(12, 12000, 12000), "max_voxels", upload=False),
    # broken files
    ImageCase("empty_nrrd", lambda f: write(f / "empty.nrrd", b""), "could not read"),
    ImageCase("empty_niigz", lambda f: write(f / "empty.nii.gz", b""), "not a valid gzip"),
    ImageCase("garbage_nrrd", lambda f: write(f / "garbage.nrrd", b"not an image" * 50),
              "could not read"),
    ImageCase("garbage_png", lambda f: write(f / "garbage.png", os.urandom(300)), "garbage.png"),
    ImageCase("garbage_jpeg", lambda f: write(f / "garbage.jpg", b"\xff\xd8" + os.urandom(300)),
              "could not read"),
    ImageCase("garbage_tiff", lambda f: write(f / "garbage.tif", b"II*\0" + os.urandom(200)),
              "could not read"),
    ImageCase("garbage_dicom", lambda f: write(f / "garbage.dcm", b"\0" * 128 + b"DICM"
                                               + os.urandom(100)), "could not read"),
    ImageCase("garbage_mha", lambda f: write(f / "garbage.mha", b"ObjectType = Image\nNDims = x\n"),
              "could not read"),
    ImageCase("garbage_gzip_nrrd", _nrrd("corrupt.nrrd", _SMALL, b"\x1f\x8b\x08\x00" + b"\xaa" * 400),
              "gzip"),
    ImageCase("truncated_gzip_nrrd", _truncated("cut.nrrd", _big_noise_nrrd, 0.5), "could not read"),
    ImageCase("truncated_niigz", _truncated("cut.nii.gz", _big_noise_niigz, 0.5), "could not read"),
    ImageCase("truncated_png", _truncated("cut.png", good_picture, 0.4), "could not read"),
    ImageCase("truncated_raw_nrrd", _nrrd("short.nrrd", nrrd_header((16, 16, 16), "float"),
                                          b"\0" * 100), "could not read"),
    ImageCase("nrrd_bad_type", _nrrd("type.nrrd", nrrd_header((4, 4, 4), "quaternion"), b"\0" * 64),
              "could not read"),
    ImageCase("nrrd_negative_size", _nrrd("neg.nrrd", nrrd_header((4, -4, 4), "uint8"), b"\0" * 64),
              "could not read"),
    ImageCase("nrrd_huge_number", _nrrd("num.nrrd", nrrd_header((99999999999999999999, 1, 1)),
                                        b"\0" * 64), "num.nrrd"),
    ImageCase("nrrd_binary_header", lambda f: write(f / "binary.nrrd", b"NRRD0004\n"
                                                    + bytes(range(256)) * 2), "could not read"),
    ImageCase("nrrd_nan_spacing", _nrrd("nanspace.nrrd", nrrd_header(
        (2, 2, 2), "uint8", extra="space directions: (nan,0,0) (0,1,0) (0,0,1)\n"), b"\0" * 8), ""),
    ImageCase("nrrd_zero_axis", _detached("zero.nhdr", nrrd_header((8, 0, 4), "float", "raw",
                                                                    "data file: zero.raw\n"),
                                          "zero.raw", b""), ""),
    ImageCase("nhdr_missing_data", _detached("missing.nhdr", nrrd_header(
        (4, 4, 4), "uint8", "raw", "data file: nowhere.raw\n"), "nowhere.raw", None), "could not read"),
    # data shorter than the header says, and header fields that cannot be true
    ImageCase("nii_short_data", nifti_short("short.nii"), "holds 1,536"),
    ImageCase("niigz_short_data", nifti_short("short.nii.gz"), "holds 1,536"),
    ImageCase("nii_negative_dim", nifti_patched("negdim.nii", "h", 42, -16), "dim[1] is -16"),
    ImageCase("nii_bad_sizeof_hdr", nifti_patched("sizeof.nii", "i", 0, 349), "sizeof_hdr"),
    ImageCase("nii_nan_vox_offset", nifti_patched("nanoffset.nii", "f", 108, float("nan")),
              "vox_offset"),
    ImageCase("nii_nan_scl_slope", nifti_patched("nanslope.nii", "f", 112, float("nan")),
              "scl_slope"),
    ImageCase("nii_inf_pixdim", nifti_patched("infspacing.nii", "f", 84, float("inf")),
              "pixdim"),
    ImageCase("dicom_half_pixel_data", dicom_half_pixels("cut.dcm", False), "pixel data"),
    ImageCase("dicom_half_pixel_element", dicom_half_pixels("short.dcm", True), "pixel data"),
    ImageCase("gzip_nrrd_empty_members", _nrrd("members.nrrd", _SMALL,
                                               lambda: gzip_empty_members(200_000)
                                               + gzip.compress(b"\1" * 2048)), "4,096"),
    ImageCase("jpeg_cut_short", _truncated("cut.jpg", good_picture, 0.5), "truncated JPEG"),
    ImageCase("bmp_short_rows", _truncated("short.bmp", good_picture, 0.5), "truncated"),
    ImageCase("mha_short_data", _truncated("short.mha", lambda p: good_volume(p), 0.6),
              "truncated"),
    ImageCase("mha_nan_spacing", lambda f: write(f / "nan.mha", b"ObjectType = Image\nNDims = 3\n"
                                                 b"DimSize = 2 2 2\nElementSpacing = 1 nan 1\n"
                                                 b"ElementType = MET_UCHAR\n"
                                                 b"ElementDataFile = LOCAL\n" + b"\0" * 8),
              "ElementSpacing"),
    ImageCase("nrrd_nan_origin", _nrrd("nanorigin.nrrd", nrrd_header(
        (2, 2, 2), "uint8", extra="space origin: (0,nan,0)\n"), b"\0" * 8), "space origin"),
    ImageCase("nan_voxels", _nan_image, "NaN"),
    ImageCase("inf_voxels", _inf_image, "NaN/Inf"),
    ImageCase("four_d", _four_d, "4-D"),
    ImageCase("vector_5", _vector5, "5 components"),
    # paths that are not image files
    ImageCase("missing_path", lambda f: f / "nowhere.nrrd", "does not exist", upload=False),
    ImageCase("unsupported_extension", lambda f: write(f / "notes.txt", b"hello"), "unsupported"),
    ImageCase("no_extension", lambda f: write(f / "image", b"hello"), "unsupported"),
    ImageCase("fifo", _fifo, "neither a file nor a folder", upload=False),
    ImageCase("symlink_loop", _loop, "", upload=False),
    ImageCase("path_through_file", lambda f: write(f / "plain.nrrd", b"x") / "inner.nrrd",
              "does not exist", upload=False),
    ImageCase("long_name", lambda f: f / ("a" * 300 + ".nrrd"), "", upload=False),
    ImageCase("empty_folder", _folder_of({}), "no DICOM", upload=False),
    ImageCase("folder_without_dicom", _folder_of({"a.txt": b"x", "b.png": b"y"}), "no DICOM",
              upload=False),
    ImageCase("unknown_sample", lambda f: Path("sample:no-such-sample"), "unknown sample",
              upload=False),
]

QUESTION_CASES: list[QuestionCase] = [
    QuestionCase("empty", "", "empty"),
    QuestionCase("blank", " \t\n ", "empty"),
    QuestionCase("too_long", "x" * 2001, "at most 2000"),
    QuestionCase("undecodable_byte", "Where is \udcff the liver?", "not valid UTF-8"),
    QuestionCase("only_undecodable", "\udcff\udcfe", "not valid UTF-8"),
    QuestionCase("lone_surrogate", "liver \ud800?", "not valid UTF-8"),
    QuestionCase("nul", "liver\x00?", "control characters"),
    QuestionCase("escape_sequence", "\x1b[31mred\x1b[0m liver", "control characters"),
    QuestionCase("bell", "liver\x07", "control characters"),
    QuestionCase("delete", "liver\x7f", "control characters"),
    QuestionCase("c1_control", "liver\x85here", "control characters"),
    QuestionCase("carriage_return", "liver\rspleen", "control characters"),
    QuestionCase("backspace", "liver\x08\x08", "control characters"),
]

_SAMPLE_Q = {"question": QUESTION}

OPTION_CASES: list[OptionCase] = [
    OptionCase("axis_superscript", ("--axis", "\u00b2"), "unknown axis",
               server={**_SAMPLE_Q, "axis": "\u00b2"}),
    OptionCase("axis_arabic_digit", ("--axis", "\u0661"), "unknown axis"),
    OptionCase("axis_name", ("--axis", "oblique"), "unknown axis",
               server={**_SAMPLE_Q, "axis": "oblique"}),
    OptionCase("axis_empty", ("--axis", ""), "unknown axis", server={**_SAMPLE_Q, "axis": ""}),
    OptionCase("axis_three", ("--axis", "3"), "unknown axis", server={**_SAMPLE_Q, "axis": 3}),
    OptionCase("axis_negative", ("--axis=-1",), "unknown axis", server={**_SAMPLE_Q, "axis": -1}),
    OptionCase("slice_superscript", ("--slice", "\u00b2"), "whole number"),
    OptionCase("slice_float", ("--slice", "1.5"), "whole number",
               server={**_SAMPLE_Q, "slice_index": 1.5}),
    OptionCase("slice_exponent", ("--slice", "1e3"), "whole number"),
    OptionCase("slice_out_of_range", ("--slice", "99"), "out of range",
               server={**_SAMPLE_Q, "slice_index": 99}),
    OptionCase("slice_negative", ("--slice=-1",), "out of range",
               server={**_SAMPLE_Q, "slice_index": -1}),
    OptionCase("slice_2d", ("--slice", "1"), "out of range", picture=True),
    OptionCase("slice_and_volume", ("--slice", "1", "--volume"), "not allowed with"),
    OptionCase("volume_2d", ("--volume",), "needs a 3-D image", picture=True),
    OptionCase("point_nan", ("--point", "10,10,nan"), "label",
               server={**_SAMPLE_Q, "points": [[10, 10, "nan"]]}),
    OptionCase("point_inf", ("--point", "10,10,inf"), "label"),
    OptionCase("point_x_nan", ("--point", "nan,3"), "finite"),
    OptionCase("point_y_inf", ("--point", "3,inf"), "finite"),
    OptionCase("point_overflow", ("--point", "1e400,3"), "finite"),
    OptionCase("point_label_2", ("--point", "3,3,2"), "label",
               server={**_SAMPLE_Q, "points": [[3, 3, 2]]}),
    OptionCase("point_label_negative", ("--point", "3,3,-1"), "label"),
    OptionCase("point_label_float", ("--point", "3,3,0.5"), "label"),
    OptionCase("point_one_number", ("--point", "3"), "numbers",
               server={**_SAMPLE_Q, "points": [[3]]}),
    OptionCase("point_four_numbers", ("--point", "1,2,1,4"), "numbers"),
    OptionCase("point_words", ("--point", "a,b"), "numbers"),
    OptionCase("point_outside", ("--point", "100000,5"), "outside the slice",
               server={**_SAMPLE_Q, "points": [[100000, 5, 1]]}),
    OptionCase("point_fullwidth_digits", ("--point", "\uff11,\uff12"), "numbers"),
    OptionCase("box_three_numbers", ("--box", "1,2,3"), "4 comma-separated",
               server={**_SAMPLE_Q, "box": [1, 2, 3]}),
    OptionCase("box_nan", ("--box", "nan,0,1,1"), "finite"),
    OptionCase("box_inf", ("--box", "0,0,inf,1"), "finite"),
    OptionCase("box_words", ("--box", "a,b,c,d"), "comma-separated"),
    OptionCase("box_outside", ("--box", "0,0,1000,1000"), "outside the slice",
               server={**_SAMPLE_Q, "box": [0, 0, 1000, 1000]}),
    OptionCase("box_empty", ("--box", ""), "comma-separated"),
    OptionCase("tokens_zero", ("--max-new-tokens", "0"), "between 1 and 1024",
               server={**_SAMPLE_Q, "max_new_tokens": 0}),
    OptionCase("tokens_huge", ("--max-new-tokens", "5000"), "between 1 and 1024",
               server={**_SAMPLE_Q, "max_new_tokens": 5000}),
    OptionCase("tokens_superscript", ("--max-new-tokens", "\u00b2"), "whole number"),
    OptionCase("tokens_negative", ("--max-new-tokens=-5",), "whole number"),
    OptionCase("window_unknown", ("--window", "bogus"), "unknown CT window"),
    OptionCase("modality_unknown", ("--modality", "PET"), "invalid choice"),
    OptionCase("device_unknown", ("--device", "gpu"), "unknown device"),
    OptionCase("device_bad_index", ("--device", "cuda:x"), "unknown device"),
    OptionCase("unknown_option", ("--colour", "red"), "unrecognized arguments",
               server={**_SAMPLE_Q, "colour": "red"}),
    OptionCase("max_voxels_zero", ("--max-voxels", "0"), "at least 1"),
    OptionCase("max_voxels_words", ("--max-voxels", "many"), "whole number"),
    OptionCase("max_voxels_negative", ("--max-voxels=-4",), "whole number"),
    OptionCase("max_bytes_unit", ("--max-bytes", "1Q"), "size in bytes"),
    OptionCase("max_bytes_zero", ("--max-bytes", "0"), "at least 1 byte"),
    OptionCase("max_side_zero", ("--max-side", "0"), "at least 1"),
    OptionCase("limit_voxels_exceeded", ("--max-voxels", "100"), "--max-voxels"),
    OptionCase("limit_side_exceeded", ("--max-side", "8"), "--max-side"),
    OptionCase("limit_bytes_exceeded", ("--max-bytes", "1K"), "--max-bytes"),
    OptionCase("checkpoint_missing", ("--checkpoint", "/no/such/checkpoint"), "checkpoint folder"),
    OptionCase("config_missing", ("--base", "--config", "/no/such.toml"), "config file not found"),
    OptionCase("config_without_base", ("--config", "x.toml"), "--config applies to --base"),
    OptionCase("token_file_missing", ("--server", "http://127.0.0.1:9", "--token-file",
                                      "/no/such/token"), "token"),
]


def _earlier(folder: Path) -> Path:
    return folder / "results"


def _proc(folder: Path) -> Path:
    return Path("/proc/medsegr-results")


def _proc_sub(folder: Path) -> Path:
    return Path("/proc/self/medsegr/results")


def _through_file(folder: Path) -> Path:
    write(folder / "plain-file", b"x")
    return folder / "plain-file" / "results"


def _is_file(folder: Path) -> Path:
    return write(folder / "results.txt", b"keep me")


def _dev_null(folder: Path) -> Path:
    return Path("/dev/null")


def _sys(folder: Path) -> Path:
    return Path("/sys/medsegr-results")


OUTPUT_CASES: list[OutputCase] = [
    OutputCase("out_under_proc", _proc, "cannot write results"),
    OutputCase("out_deep_under_proc", _proc_sub, "cannot write results"),
    OutputCase("out_under_sys", _sys, "cannot write results"),
    OutputCase("out_through_a_file", _through_file, "is not a folder"),
    OutputCase("out_is_a_file", _is_file, "is not a folder"),
    OutputCase("out_is_dev_null", _dev_null, "is not a folder"),
]


def all_ids() -> list[str]:
    return ([c.id for c in IMAGE_CASES] + [c.id for c in QUESTION_CASES]
            + [c.id for c in OPTION_CASES] + [c.id for c in OUTPUT_CASES])
