"""Loading, validating and writing medical images.

Conventions used throughout MedSegR
-----------------------------------
* ``MedicalImage.array`` is in numpy order ``(z, y, x)``: the slowest axis is the
  slice axis ``k``, the fastest the column axis ``i``. It is always 3-D; a 2-D
  picture becomes shape ``(1, H, W)``. Its type is ``float32``, or, where the reader
  is asked to keep it (``stored_type=True``: what the engine's command line and server
  do), the file's own narrow integer type (:data:`STORED_TYPES`: ``uint8``, ``int8``,
  ``uint16``, ``int16``), a quarter or half of the memory; every value of those types
  is exact in float32, and the engine converts slice by slice where it computes.
* ``spacing``, ``origin`` and ``direction`` follow ITK: spacing is in index order
  ``(x, y, z)`` = ``(i, j, k)`` in mm, the origin is the physical position of voxel
  ``(0, 0, 0)`` in LPS coordinates (mm), and ``direction`` is the 3x3 matrix,
  row-major, whose column ``c`` is the unit vector of index axis ``c`` in LPS.
  So ``lps = origin + direction @ (spacing * (i, j, k))``.
  3D Slicer works in RAS: its IJK-to-RAS matrix is this one with the first two
  rows (x and y) negated.

All file formats go through SimpleITK, after the header of each is checked here first
(see "header proofs" below: every field, the sizes against the limits, and the data as
long as the header says). Every problem a user can cause raises
:class:`medsegr.errors.InputError` with a one-line message.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import re
import struct
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medsegr.errors import InputError
from medsegr.io.atomic import atomic_path
from medsegr.io.limits import ImageLimits
from medsegr.io.nrrd_codec import GzipStreamError, inflate_gzip

__all__ = [
    "MODALITIES",
    "STORED_TYPES",
    "kept_type",
    "READABLE_EXTENSIONS",
    "WRITABLE_EXTENSIONS",
    "ImageGeometry",
    "MedicalImage",
    "atomic_output",
    "file_extension",
    "image_from_array",
    "itk_error_message",
    "load_image",
    "write_image",
]

#: modality codes a :class:`MedicalImage` may carry ("OT" = other / unknown)
MODALITIES = ("CT", "MR", "OT")

#: voxel types a :class:`MedicalImage` may hold besides float32: narrow integers, each
#: value exact in float32 (wider or other types are converted to float32)
STORED_TYPES = tuple(np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16))


def kept_type(dtype: np.dtype) -> np.dtype:
    """The type an image of ``dtype`` voxels holds when read with ``stored_type=True``:
    ``dtype`` in native byte order when it is one of :data:`STORED_TYPES`, else float32."""
    native = np.dtype(dtype).newbyteorder("=")
    return native if native in STORED_TYPES else np.dtype(np.float32)

#: 3-D medical formats: extension -> SimpleITK ImageIO
_MEDICAL_IO = {
    ".nrrd": "NrrdImageIO",
    ".nhdr": "NrrdImageIO",
    ".nii": "NiftiImageIO",
    ".nii.gz": "NiftiImageIO",
    ".mha": "MetaImageIO",
    ".mhd": "MetaImageIO",
    ".dcm": "GDCMImageIO",
}
#: 2-D picture formats: extension -> SimpleITK ImageIO
_RASTER_IO = {
    ".png": "PNGImageIO",
    ".jpg": "JPEGImageIO",
    ".jpeg": "JPEGImageIO",
    ".bmp": "BMPImageIO",
    ".tif": "TIFFImageIO",
    ".tiff": "TIFFImageIO",
}
READABLE_EXTENSIONS = tuple(_MEDICAL_IO) + tuple(_RASTER_IO)
#: single-file formats :func:`write_image` can write
WRITABLE_EXTENSIONS = (".nrrd", ".nii", ".nii.gz", ".mha")

_DICOM_MODALITY_TAG = "0008|0060"
#: ITU-R BT.601 luma weights used to turn RGB(A) pixels into grey values
_LUMA_WEIGHTS = (0.299, 0.587, 0.114)
#: an image is taken for CT when its minimum lies in this range (Hounsfield units:
#: air is -1000, scanners pad outside the field of view with -1024, -2048 or -3024)
_CT_MINIMUM_RANGE = (-3100.0, -500.0)
_ORTHONORMAL_TOLERANCE = 1e-4
_IDENTITY_DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

Vector3 = tuple[float, float, float]


@dataclass(frozen=True)
class ImageGeometry:
    """Voxel grid of an image, without the voxel values.

    ``shape`` is numpy order ``(z, y, x)``; ``spacing``, ``origin`` and
    ``direction`` follow the ITK/LPS conventions of the module docstring.
    """

    shape: tuple[int, int, int]
    spacing: Vector3
    origin: Vector3
    direction: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise InputError(f"image shape must be 3 positive sizes (z, y, x), got {self.shape}")
        _check_spacing(self.spacing)
        _check_origin(self.origin)
        _check_direction(self.direction)

    def make_sitk(self, array: np.ndarray) -> sitk.Image:
        """A SimpleITK image holding ``array`` (numpy order ``(z, y, x)``) on this grid.

        Boolean arrays are stored as ``uint8``; other dtypes are kept.
        """
        data = np.asarray(array)
        if data.shape != self.shape:
            raise InputError(f"array shape {data.shape} does not match the image shape {self.shape}")
        if data.dtype == np.bool_:
            data = data.astype(np.uint8)
        image = sitk.GetImageFromArray(data, isVector=False)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def ijk_to_lps(self) -> np.ndarray:
        """4x4 homogeneous matrix from voxel index ``(i, j, k)`` to LPS millimetres."""
        matrix = np.eye(4)
        matrix[:3, :3] = np.reshape(self.direction, (3, 3)) * np.asarray(self.spacing)
        matrix[:3, 3] = self.origin
        return matrix

    def ijk_to_ras(self) -> np.ndarray:
        """4x4 homogeneous matrix from voxel index ``(i, j, k)`` to RAS millimetres (3D Slicer)."""
        lps_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
        matrix: np.ndarray = lps_to_ras @ self.ijk_to_lps()
        return matrix


@dataclass
class MedicalImage:
    """A 3-D scalar image with its physical geometry.

    Attributes:
        array: voxel values, numpy order ``(z, y, x)``, always 3-D; ``float32`` or one
            of :data:`STORED_TYPES` (see the module docstring).
        spacing: voxel size in mm, ITK order ``(x, y, z)``.
        origin: LPS position (mm) of voxel ``(0, 0, 0)``.
        direction: 9 values, row-major 3x3 ITK direction matrix (columns = index axes in LPS).
        modality: ``"CT"``, ``"MR"`` or ``"OT"`` (other / unknown).
        source: the path the image was read from, or ``"<array>"``.
        is_2d: True when the image has a single slice (``z == 1``): a 2-D picture
            or array, or a single DICOM slice.
    """

    array: np.ndarray
    spacing: Vector3
    origin: Vector3
    direction: tuple[float, ...]
    modality: str
    source: str
    is_2d: bool

    def __post_init__(self) -> None:
        if not isinstance(self.array, np.ndarray) or self.array.ndim != 3:
            raise InputError("MedicalImage.array must be a 3-D numpy array in (z, y, x) order")
        if self.array.dtype != np.float32 and self.array.dtype not in STORED_TYPES:
            raise InputError(f"MedicalImage.array must be float32, uint8, int8, uint16 or "
                             f"int16, got {self.array.dtype}")
        if self.modality not in MODALITIES:
            raise InputError(f"unknown modality {self.modality!r}: expected one of {', '.join(MODALITIES)}")
        self.spacing = _check_spacing(self.spacing)
        self.origin = _check_origin(self.origin)
        self.direction = _check_direction(self.direction)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape, numpy order ``(z, y, x)``."""
        z, y, x = self.array.shape
        return (int(z), int(y), int(x))

    @property
    def geometry(self) -> ImageGeometry:
        """The voxel grid of this image."""
        return ImageGeometry(self.shape, self.spacing, self.origin, self.direction)

    def to_sitk(self, array: np.ndarray | None = None) -> sitk.Image:
        """A SimpleITK image with exactly this geometry.

        Args:
            array: voxel values in ``(z, y, x)`` order and of this image's shape, of any
                dtype (e.g. a ``uint8`` or ``bool`` mask); defaults to ``self.array``.
        """
        return self.geometry.make_sitk(self.array if array is None else array)


# --------------------------------------------------------------------------- loading


def load_image(path: str | os.PathLike[str], modality: str | None = None,
               limits: ImageLimits | None = None, *, stored_type: bool = False) -> MedicalImage:
    """Read a medical image file or DICOM series folder.

    Supported: NRRD (``.nrrd``, ``.nhdr``), NIfTI (``.nii``, ``.nii.gz``), MetaImage
    (``.mha``, ``.mhd``), a single DICOM file (``.dcm``, or no extension with a DICOM
    preamble), a folder holding a DICOM series (the series with most files is read),
    and 2-D PNG/JPEG/BMP/TIFF pictures (colour is turned into grey luminance).

    Modality: the DICOM tag (0008,0060) when present (``CT``/``MR``, anything else
    ``OT``); else the ``modality`` argument; else ``OT`` for pictures, ``CT`` when
    the minimum looks like Hounsfield units (between -3100 and -500), and ``MR``
    otherwise.

    ``limits`` (default :class:`ImageLimits`) bound the voxels, the longest side and
    the decoded bytes; they are checked from the file header before the voxels are
    read, and compressed ``.gz`` files are never inflated far past what their header
    declares (:class:`medsegr.io.limits.ImageTooLarge` when exceeded).

    ``stored_type``: keep the file's voxel type when it is one of :data:`STORED_TYPES`
    (an 8- or 16-bit integer image then takes a quarter or half of the float32 memory);
    otherwise, and by default, the array is float32.
    """
    requested = _normalise_modality(modality)
    bounds = limits if limits is not None else ImageLimits()
    source = Path(path)
    try:
        exists = source.exists()
    except (OSError, ValueError) as error:  # a name too long, a NUL byte
        raise InputError(f"image path cannot be used: {source} "
                         f"({getattr(error, 'strerror', None) or error})") from None
    if not exists:
        raise InputError(f"image path does not exist: {source}")
    if not source.is_dir() and not source.is_file():
        raise InputError(f"image path is neither a file nor a folder (a device, pipe or "
                         f"socket): {source}")
    if source.is_dir():
        image, dicom_modality = _read_dicom_series(source, bounds)
        is_raster = False
    else:
        io_name = _image_io_for(source)
        image, dicom_modality = _read_file(source, io_name, bounds)
        is_raster = io_name in _RASTER_IO.values()
    image = _as_scalar_3d(image, str(source))
    array = _checked_voxels(sitk.GetArrayViewFromImage(image), str(source), copy=True,
                            stored_type=stored_type)
    chosen = _modality_from_tag(dicom_modality) if dicom_modality is not None else requested
    if chosen is None:
        chosen = "OT" if is_raster else _guess_medical_modality(array)
    return MedicalImage(
        array=array,
        spacing=_vector3(image.GetSpacing()),
        origin=_vector3(image.GetOrigin()),
        direction=tuple(float(v) for v in image.GetDirection()),
        modality=chosen,
        source=str(source),
        is_2d=array.shape[0] == 1,
    )


def file_extension(path: str | os.PathLike[str]) -> str:
    """Lower-case extension of ``path``, counting ``.nii.gz`` as one (``""`` when none)."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def _image_io_for(path: Path) -> str:
    """The SimpleITK ImageIO that reads ``path``, chosen by extension (DICOM by content)."""
    extension = file_extension(path)
    if extension in _MEDICAL_IO:
        return _MEDICAL_IO[extension]
    if extension in _RASTER_IO:
        return _RASTER_IO[extension]
    if _has_dicom_preamble(path):
        return "GDCMImageIO"
    supported = ", ".join(READABLE_EXTENSIONS)
    raise InputError(
        f"unsupported image format {extension or '(no extension)'!r} for {path}: "
        f"supported are {supported}, DICOM files and DICOM series folders"
    )


def _has_dicom_preamble(path: Path) -> bool:
    """True when ``path`` carries the ``DICM`` magic after the 128-byte preamble."""
    try:
        with path.open("rb") as handle:
            header = handle.read(132)
    except OSError:
        return False
    return len(header) == 132 and header[128:] == b"DICM"


def _read_file(path: Path, io_name: str, limits: ImageLimits) -> tuple[sitk.Image, str | None]:
    """Read one file; returns the image and its DICOM modality tag (None when absent).

    The header is proven first (:func:`_proven_layout`: every field checked, the sizes
    against ``limits``), then the data is shown to be as long as the header says
    (:func:`_prove_data`, inflating compressed data in bounded chunks); only then are
    the voxels read."""
    reader = sitk.ImageFileReader()
    reader.SetImageIO(io_name)
    reader.SetFileName(str(path))
    gzipped = path.name.lower().endswith(".gz")
    if gzipped and not _has_gzip_magic(path):
        raise InputError(f"could not read image {path}: not a valid gzip file (no gzip header)")
    layout = _proven_layout(path, io_name, limits, gzipped)
    declared = _checked_header(reader, path, io_name, limits, count=1)
    if io_name == "JPEGImageIO":
        _prove_jpeg(path)
    elif layout is not None:
        _prove_data(layout, declared)
    try:
        with _itk_warnings_silenced():
            image = reader.Execute()
    except RuntimeError as error:
        raise InputError(
            f"could not read image {path} (unreadable, truncated or not {_format_name(io_name)}): "
            f"{itk_error_message(error)}"
        ) from None
    tag = image.GetMetaData(_DICOM_MODALITY_TAG) if image.HasMetaDataKey(_DICOM_MODALITY_TAG) else None
    return image, tag


def _has_gzip_magic(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(2) == b"\x1f\x8b"
    except OSError:
        return False


def _checked_header(reader: sitk.ImageFileReader, path: Path, io_name: str,
                    limits: ImageLimits, count: int) -> int:
    """Read the header of ``reader``'s file, check ``count`` such images (a DICOM series)
    against ``limits`` and return the bytes of voxel data they declare."""
    try:
        with _itk_warnings_silenced():
            reader.ReadImageInformation()
    except RuntimeError as error:
        raise InputError(
            f"could not read image {path} (unreadable, truncated or not {_format_name(io_name)}): "
            f"{itk_error_message(error)}"
        ) from None
    sizes = [int(s) for s in reader.GetSize()]
    if count > 1:
        sizes = [*sizes[:2], count * (sizes[2] if len(sizes) > 2 else 1)]
    if 0 in sizes:
        raise InputError(f"image has a zero-size axis (size {tuple(sizes)}): {path}")
    per_voxel = max(1, reader.GetNumberOfComponents()) * _component_bytes(reader.GetPixelID())
    source = str(path) if count == 1 else f"the DICOM series of {count} files at {path.parent}"
    limits.check(sizes, per_voxel, source)
    return int(np.prod(sizes, dtype=np.int64)) * per_voxel


def _component_bytes(pixel_id: int) -> int:
    """Bytes of one pixel component of SimpleITK pixel type ``pixel_id`` (8 when unknown)."""
    try:
        return int(sitk.Image([1, 1], pixel_id, 1).GetSizeOfPixelComponent())
    except (RuntimeError, TypeError, ValueError):
        try:
            return int(sitk.Image([1, 1], pixel_id).GetSizeOfPixelComponent())
        except (RuntimeError, TypeError, ValueError):
            return 8


# --------------------------------------------------------------------------- header proofs
#
# SimpleITK reads headers leniently: a NIfTI with a negative dim, a wrong sizeof_hdr or a
# NaN vox_offset is read, data shorter than the header says comes back zero-filled
# (NIfTI, plain or gzip), a DICOM file with half its pixel data or a cut-off JPEG gives
# garbage voxels. So each format's header is parsed here first, its fields checked, and
# the data shown to hold the bytes the header declares, before SimpleITK reads a voxel.


#: bytes a gzip-compressed file may inflate to beyond its declared voxel data
#: (the format header and, for NIfTI, its extensions)
_GZIP_HEADER_SLACK = 16 * 1024 * 1024
#: bytes read at once from a file being checked
_READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class _DataLayout:
    """Where a file's voxel data lies, as its (proven) header says."""

    #: the file holding the data (the image file itself, or a detached data file)
    data_path: Path
    #: where the data starts: in ``data_path``, or in the inflated stream when
    #: ``whole_gzip``
    offset: int
    #: the data (from ``offset``) is gzip/zlib compressed
    compressed: bool = False
    #: the whole file is gzip (``.nii.gz``): ``offset`` counts inflated bytes
    whole_gzip: bool = False
    #: bytes of voxel data the header declares (None: those SimpleITK reads from it)
    expected: int | None = None
    #: how the declared size is made up, for the message (e.g. "64 x 64 x 8 x 2 bytes")
    shape: str = ""


def _proven_layout(path: Path, io_name: str, limits: ImageLimits,
                   gzipped: bool) -> _DataLayout | None:
    """Check the header of ``path`` field by field; the layout of its data, or None
    where it cannot be told from the header (SimpleITK then reads it unaided). A JPEG
    file is proven after SimpleITK has read its header (:func:`_prove_jpeg`)."""
    if io_name == "GDCMImageIO":
        _prove_dicom_file(path, limits)
        return None
    if io_name == "NiftiImageIO":
        return _nifti_layout(path, limits, gzipped)
    if io_name == "NrrdImageIO":
        return _nrrd_layout(path)
    if io_name == "MetaImageIO":
        return _metaimage_layout(path)
    if io_name == "BMPImageIO":
        return _bmp_layout(path)
    return None


def _refuse(path: Path, reason: str) -> InputError:
    return InputError(f"could not read image {path}: {reason}")


def _zero_axis(path: Path, sizes: str) -> InputError:
    return _refuse(path, f"an axis size is zero ({sizes}): the image has a zero-size axis")


def _prove_data(layout: _DataLayout, declared: int) -> None:
    """Refuse data shorter than the header declares (naming both byte counts), and
    compressed data that inflates past it."""
    expected = layout.expected if layout.expected is not None else declared
    path = layout.data_path
    if layout.whole_gzip:
        found = _inflated_size(path, 0, layout.offset + expected + _GZIP_HEADER_SLACK)
        found -= layout.offset
    elif layout.compressed:
        found = _inflated_size(path, layout.offset, expected)
    else:
        try:
            found = path.stat().st_size - layout.offset
        except OSError as error:
            raise _refuse(path, str(error.strerror or error)) from None
    if found < expected:
        shape = f" ({layout.shape})" if layout.shape else ""
        where = "inflated data" if layout.whole_gzip or layout.compressed else "file"
        raise _refuse(path, f"truncated: its header declares {expected:,} bytes of voxel data"
                      f"{shape} from byte {layout.offset:,}, the {where} holds "
                      f"{max(found, 0):,}; the file is cut short or its header is wrong")


def _file_chunks(path: Path, offset: int) -> Iterator[bytes]:
    with path.open("rb") as handle:
        handle.seek(offset)
        while chunk := handle.read(_READ_CHUNK):
            yield chunk


def _inflated_size(path: Path, offset: int, max_inflated: int) -> int:
    """Bytes the gzip (or zlib) data of ``path`` from byte ``offset`` inflates to, checked
    to its end without holding it; more than ``max_inflated`` is refused at once.

    Linear in the file size, however many gzip members it holds."""
    total = 0
    try:
        for piece in inflate_gzip(_file_chunks(path, offset), max_inflated):
            total += len(piece)
    except GzipStreamError as error:
        if error.kind == "too_long":
            raise _refuse(path, f"its compressed data inflates past {max_inflated:,} bytes, "
                          "more than its header declares") from None
        if error.kind == "corrupt":
            raise _refuse(path, f"not a valid gzip file ({error})") from None
        raise _refuse(path, f"{error}; the compressed file is truncated or damaged") from None
    except OSError as error:
        raise _refuse(path, str(error.strerror or error)) from None
    return total


def _inflated_head(path: Path, size: int) -> bytes:
    """The first ``size`` inflated bytes of the gzip file ``path`` (fewer when it holds
    fewer); inflates little more than that."""
    head = bytearray()
    pieces = inflate_gzip(_file_chunks(path, 0), 1 << 62)
    try:
        for piece in pieces:
            head += piece[:size - len(head)]
            if len(head) >= size:
                break
    except GzipStreamError as error:
        if error.kind != "truncated":
            raise _refuse(path, f"not a valid gzip file ({error})") from None
    except OSError as error:
        raise _refuse(path, str(error.strerror or error)) from None
    finally:
        pieces.close()
    return bytes(head)


def _read_head(path: Path, size: int) -> bytes:
    try:
        with path.open("rb") as handle:
            return handle.read(size)
    except OSError as error:
        raise _refuse(path, str(error.strerror or error)) from None


def _finite_values(path: Path, what: str, values: Sequence[float]) -> None:
    if not all(math.isfinite(v) for v in values):
        shown = ", ".join(repr(float(v)) for v in values)
        raise _refuse(path, f"{what} must be finite numbers, the header has {shown}; "
                      "fix or re-export the file")


# -- NIfTI


#: NIfTI datatype code -> bytes per voxel
_NIFTI_BYTES = {2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4,
                1024: 8, 1280: 8, 1536: 16, 1792: 16, 2048: 32, 2304: 4}


@dataclass(frozen=True)
class _NiftiHeader:
    sizeof_hdr: int
    dim: tuple[int, ...]
    datatype: int
    pixdim: tuple[float, ...]
    vox_offset: float
    scl_slope: float
    scl_inter: float
    qform_code: int
    sform_code: int
    quatern: tuple[float, ...]
    srow: tuple[float, ...]


def _parse_nifti(head: bytes, path: Path) -> _NiftiHeader:
    """The fields of a NIfTI-1 (348-byte) or NIfTI-2 (540-byte) header, either byte order."""
    if len(head) < 348:
        raise _refuse(path, f"its NIfTI header is cut short ({len(head)} of 348 bytes)")
    for endian in "<>":
        sizeof_hdr = struct.unpack_from(endian + "i", head, 0)[0]
        if sizeof_hdr in (348, 540):
            break
    else:
        raise _refuse(path, f"sizeof_hdr is {struct.unpack_from('<i', head, 0)[0]}, not 348 "
                      "(NIfTI-1) or 540 (NIfTI-2): not a NIfTI file, or a damaged header")
    if sizeof_hdr == 348:
        def take(fmt: str, at: int) -> tuple:
            return struct.unpack_from(endian + fmt, head, at)
        return _NiftiHeader(348, take("8h", 40), take("h", 70)[0], take("8f", 76),
                            take("f", 108)[0], *take("2f", 112), *take("2h", 252),
                            take("6f", 256), take("12f", 280))
    if len(head) < 540:
        raise _refuse(path, f"its NIfTI-2 header is cut short ({len(head)} of 540 bytes)")

    def take2(fmt: str, at: int) -> tuple:
        return struct.unpack_from(endian + fmt, head, at)
    return _NiftiHeader(540, take2("8q", 16), take2("h", 12)[0], take2("8d", 104),
                        float(take2("q", 168)[0]), *take2("2d", 176), *take2("2i", 344),
                        take2("6d", 352), take2("12d", 400))


def _nifti_layout(path: Path, limits: ImageLimits, gzipped: bool) -> _DataLayout:
    """Check a NIfTI header: sizeof_hdr, dim, datatype, pixdim, vox_offset, scaling and
    the orientation in use; check its sizes against ``limits``."""
    head = _inflated_head(path, 540) if gzipped else _read_head(path, 540)
    header = _parse_nifti(head, path)
    rank = header.dim[0]
    if not 1 <= rank <= 7:
        raise _refuse(path, f"NIfTI dim[0] is {rank}: the number of axes must be 1 to 7")
    sizes = [int(n) for n in header.dim[1:rank + 1]]
    for axis, size in enumerate(sizes, start=1):
        if size < 0:
            raise _refuse(path, f"NIfTI dim[{axis}] is {size}: sizes must be positive")
    if 0 in sizes:
        raise _zero_axis(path, f"NIfTI dim {tuple(sizes)}")
    per_voxel = _NIFTI_BYTES.get(header.datatype)
    if per_voxel is None:
        raise _refuse(path, f"unsupported NIfTI datatype {header.datatype}")
    _finite_values(path, f"NIfTI pixdim[1..{rank}] (voxel spacing)", header.pixdim[1:rank + 1])
    _finite_values(path, "NIfTI vox_offset (where the voxels start)", [header.vox_offset])
    _finite_values(path, "NIfTI scl_slope and scl_inter (intensity scaling)",
                   [header.scl_slope, header.scl_inter])
    if header.qform_code > 0:
        _finite_values(path, "NIfTI quatern_b/c/d, qoffset_x/y/z and qfac (the qform)",
                       [*header.quatern, header.pixdim[0]])
    if header.sform_code > 0:
        _finite_values(path, "NIfTI srow_x/y/z (the sform)", header.srow)
    if header.vox_offset < 0:
        raise _refuse(path, f"NIfTI vox_offset is {header.vox_offset}: it must not be negative")
    limits.check(sizes, per_voxel, str(path))
    offset = max(int(header.vox_offset), header.sizeof_hdr)  # as the NIfTI library reads it
    shown = " x ".join(str(n) for n in sizes) + f" x {per_voxel} bytes"
    return _DataLayout(path, offset, whole_gzip=gzipped,
                       expected=math.prod(sizes) * per_voxel, shape=shown)


# -- NRRD (read by SimpleITK: detached headers and vector images too)


_NRRD_FIELD = re.compile(r"^([^:#][^:]*):[ \t]*(.*?)\s*$")
_NRRD_VECTOR = re.compile(r"\(([^()]*)\)|none", re.IGNORECASE)
_NRRD_SPATIAL_KINDS = {"domain", "space", "time", "???", "none"}

#: the longest NRRD header read when checking its fields
MAX_NRRD_HEADER_BYTES = 64 * 1024


def _nrrd_fields(path: Path) -> tuple[dict[str, str], int] | None:
    """The fields of ``path``'s NRRD header (names lower case) and where its data
    starts; None when no header end lies within :data:`MAX_NRRD_HEADER_BYTES` (SimpleITK
    then reports the malformed header)."""
    head = _read_head(path, MAX_NRRD_HEADER_BYTES)
    match = re.search(rb"\r?\n\r?\n", head)
    if match is None:
        if path.suffix.lower() == ".nhdr":  # a detached header need not end in a blank line
            end = len(head)
            if end >= MAX_NRRD_HEADER_BYTES:
                return None
        else:
            return None
        start = end
    else:
        end, start = match.start(), match.end()
    fields = {}
    for line in head[:end].decode("latin-1").splitlines()[1:]:
        found = _NRRD_FIELD.match(line)
        if found and ":=" not in line:
            fields[found.group(1).strip().lower()] = found.group(2)
    return fields, start


def _nrrd_numbers(path: Path, what: str, text: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise _refuse(path, f"NRRD '{what}' must be numbers, got {text[:80]!r}") from None


def _nrrd_layout(path: Path) -> _DataLayout | None:
    """Check a NRRD header's sizes and geometry (spacings, space directions, space
    origin: finite); the layout of its data for raw and gzip encodings."""
    parsed = _nrrd_fields(path)
    if parsed is None:
        return None
    fields, start = parsed
    if "sizes" in fields:
        try:
            sizes = [int(v) for v in fields["sizes"].split()]
        except ValueError:
            raise _refuse(path, f"NRRD 'sizes' must be whole numbers, got "
                          f"{fields['sizes'][:80]!r}") from None
        if any(s < 0 for s in sizes):
            raise _refuse(path, f"NRRD 'sizes' must be positive, got {sizes}")
        if 0 in sizes:
            raise _zero_axis(path, f"NRRD sizes {tuple(sizes)}")
    kinds = [k.lower() for k in fields.get("kinds", "").split()]
    if "spacings" in fields:
        values = _nrrd_numbers(path, "spacings", fields["spacings"])
        spatial = [v for axis, v in enumerate(values)
                   if axis >= len(kinds) or kinds[axis] in _NRRD_SPATIAL_KINDS]
        _finite_values(path, "NRRD 'spacings' of the spatial axes", spatial)
    if "space directions" in fields:
        for match in _NRRD_VECTOR.finditer(fields["space directions"]):
            if match.group(1) is not None:
                _finite_values(path, "NRRD 'space directions'",
                               _nrrd_numbers(path, "space directions", match.group(1)))
    if "space origin" in fields:
        _finite_values(path, "NRRD 'space origin'",
                       _nrrd_numbers(path, "space origin", fields["space origin"].strip("() ")))
    encoding = fields.get("encoding", "").strip().lower()
    if encoding not in ("raw", "gzip", "gz"):
        return None  # text or bzip2 data: SimpleITK counts what it reads
    if any(fields.get(name, "0").strip() != "0" for name in ("line skip", "lineskip")):
        return None  # skipped lines: the reader alone knows where the data starts
    skip = fields.get("byte skip", fields.get("byteskip", "0")).strip()
    if not skip.isdigit():
        return None  # -1: the data ends the file
    detached = fields.get("data file") or fields.get("datafile")
    if detached is None:
        data_path, offset = path, start + int(skip)
    else:
        name = detached.strip()
        if name.upper().startswith("LIST") or "%" in name or " " in name:
            return None  # several data files
        data_path = Path(name) if Path(name).is_absolute() else path.parent / name
        if not data_path.is_file():
            return None  # SimpleITK names the missing file
        offset = int(skip)
    if encoding != "raw" and int(skip):
        return None  # byte skip counts inflated bytes
    return _DataLayout(data_path, offset, compressed=encoding != "raw")


# -- MetaImage


def _metaimage_layout(path: Path) -> _DataLayout | None:
    """Check a MetaImage header (NDims, DimSize, ElementSpacing, Offset, TransformMatrix)
    and find its data (after the header, or in the detached file it names)."""
    head = _read_head(path, MAX_NRRD_HEADER_BYTES)
    fields: dict[str, str] = {}
    end = None
    position = 0
    for raw_line in head.splitlines(keepends=True):
        position += len(raw_line)
        key, sep, value = raw_line.decode("latin-1").partition("=")
        if not sep:
            continue
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            end = position
            break
    if end is None:
        return None  # SimpleITK reports the malformed header
    try:
        rank = int(fields.get("NDims", "0"))
        sizes = [int(v) for v in fields.get("DimSize", "").split()]
    except ValueError:
        raise _refuse(path, "MetaImage NDims and DimSize must be whole numbers") from None
    if any(s < 0 for s in sizes) or (rank and len(sizes) != rank):
        raise _refuse(path, f"MetaImage DimSize {sizes} must be {rank} positive sizes")
    if 0 in sizes:
        raise _zero_axis(path, f"MetaImage DimSize {tuple(sizes)}")
    for names in (("ElementSpacing", "ElementSize"), ("Offset", "Position", "Origin"),
                  ("TransformMatrix", "Rotation", "Orientation")):
        for name in names:
            if name in fields:
                values = _nrrd_numbers(path, name, fields[name])
                _finite_values(path, f"MetaImage {name}", values)
                if name == "ElementSpacing" and any(v <= 0 for v in values):
                    raise _refuse(path, f"MetaImage ElementSpacing must be positive, got {values}")
    compressed = fields.get("CompressedData", "False").strip().lower() in ("true", "1")
    target = fields["ElementDataFile"].strip()
    if target.upper() == "LOCAL":
        return _DataLayout(path, end, compressed=compressed)
    if target.upper().startswith("LIST") or "%" in target or " " in target:
        return None
    data_path = Path(target) if Path(target).is_absolute() else path.parent / target
    try:
        skip = int(fields.get("HeaderSize", "0"))
    except ValueError:
        return None
    if skip < 0 or not data_path.is_file():
        return None  # data at the end of the file, or missing (SimpleITK says so)
    return _DataLayout(data_path, skip, compressed=compressed)


# -- DICOM


#: DICOM attributes whose values must be finite numbers: keyword -> must be positive
_DICOM_NUMBERS = {"PixelSpacing": True, "ImagePositionPatient": False,
                  "ImageOrientationPatient": False, "RescaleSlope": False,
                  "RescaleIntercept": False}


def _prove_dicom_file(path: Path, limits: ImageLimits, count: int = 1) -> tuple[int, int] | None:
    """Check a DICOM file's geometry and scaling fields, its size against ``limits``
    (as ``count`` such files: a series), and that its (uncompressed) pixel data holds
    Rows x Columns x Samples x Frames x BitsAllocated/8 bytes; returns (Rows, Columns).
    Needs pydicom (installed with the engine); None without it."""
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(path, defer_size=4096, force=True)
            return _prove_dicom_dataset(dataset, path, limits, count)
    except (InvalidDicomError, EOFError, ValueError, TypeError, KeyError, IndexError,
            OverflowError, struct.error, NotImplementedError) as error:
        raise _refuse(path, f"not a readable DICOM file ({error})") from None
    except OSError as error:
        raise _refuse(path, str(error.strerror or error)) from None


def _prove_dicom_dataset(dataset: object, path: Path, limits: ImageLimits,
                         count: int) -> tuple[int, int] | None:
    get = dataset.get  # type: ignore[attr-defined]
    for keyword, positive in _DICOM_NUMBERS.items():
        value = get(keyword)
        if value is None or value == "":
            continue
        items = [value] if isinstance(value, (str, bytes, int, float)) else list(value)
        values = [float(v) for v in items]
        _finite_values(path, f"DICOM {keyword}", values)
        if positive and any(v <= 0 for v in values):
            raise _refuse(path, f"DICOM {keyword} must be positive, got {values}")
    element = dataset.get_item(0x7FE00010, keep_deferred=True)  # type: ignore[attr-defined]
    rows, columns = get("Rows"), get("Columns")
    if element is None or rows is None or columns is None:
        return None  # no (plain) pixel data: SimpleITK says what it makes of it
    if int(rows) == 0 or int(columns) == 0:
        raise _zero_axis(path, f"DICOM Rows {rows}, Columns {columns}")
    length = getattr(element, "length", None)
    if length is None:  # read, not deferred: a small value
        value = element.value
        length = len(value) if value is not None else 0
    if length == 0xFFFFFFFF or getattr(element, "is_undefined_length", False):
        return int(rows), int(columns)  # encapsulated (compressed) frames: the codec checks
    frames = _dicom_count(get("NumberOfFrames"))
    samples = _dicom_count(get("SamplesPerPixel"))
    bits = _dicom_count(get("BitsAllocated"), 16)
    source = str(path) if count == 1 else f"the DICOM series of {count} files at {path.parent}"
    limits.check([int(columns), int(rows), frames * count], samples * max(1, (bits + 7) // 8),
                 source)
    # YBR_FULL_422 keeps one chroma pair per two pixels: 2 samples' worth per pixel
    stored = 2 if samples == 3 and get("PhotometricInterpretation") == "YBR_FULL_422" else samples
    expected = (int(rows) * int(columns) * stored * frames * bits + 7) // 8
    tell = getattr(element, "value_tell", None)
    meta = getattr(dataset, "file_meta", None)
    deflated = str(getattr(meta, "TransferSyntaxUID", "")) == _DICOM_DEFLATED
    if tell is None or deflated:  # positions in the inflated dataset, not in the file
        found = length
    else:
        found = min(length, max(0, path.stat().st_size - tell))
    if found < expected:
        raise _refuse(path, f"truncated: its header declares {expected:,} bytes of pixel data "
                      f"({rows} x {columns} x {samples} samples x {frames} frames x {bits} "
                      f"bits), the file holds {found:,}; the file is cut short or damaged")
    return int(rows), int(columns)


#: the Deflated Explicit VR Little Endian transfer syntax (the whole dataset compressed)
_DICOM_DEFLATED = "1.2.840.10008.1.2.1.99"


def _dicom_count(value: object, default: int = 1) -> int:
    """An IS/US count such as NumberOfFrames; ``default`` when absent or not a whole
    number (GDCM reads such a value as the default too)."""
    try:
        number = int(str(value).strip()) if value not in (None, "") else default
    except ValueError:
        return default
    return number if number > 0 else default


# -- pictures


def _prove_jpeg(path: Path) -> None:
    """A JPEG cut short is decoded with grey filling the rest: refuse one whose
    compressed scan has no end-of-image marker."""
    try:
        size = path.stat().st_size
        if size == 0:
            return  # SimpleITK reports the empty file
        with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            scan = _jpeg_first_scan(data)
            if scan >= 0 and data.find(b"\xff\xd9", scan) < 0:
                raise _refuse(path, f"truncated JPEG: no end-of-image marker after its "
                              f"scan data ({size:,} bytes); the file is cut short")
    except (OSError, ValueError) as error:
        raise _refuse(path, str(getattr(error, "strerror", None) or error)) from None


def _jpeg_first_scan(data: mmap.mmap) -> int:
    """Where the first top-level start-of-scan marker of a JPEG lies (-1: none found),
    walking the marker segments from the start (so a thumbnail inside an APP segment,
    with its own scan and end marker, is skipped)."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return -1
        marker = data[pos + 1]
        if marker == 0xDA:
            return pos
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length
            pos += 2
        else:
            pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    return -1


def _bmp_layout(path: Path) -> _DataLayout | None:
    """An uncompressed BMP holds rows of ``ceil(width x bits / 32) x 4`` bytes."""
    head = _read_head(path, 54)
    if len(head) < 54 or head[:2] != b"BM":
        return None
    offset, info_size, width, height, _, bits, compression = struct.unpack_from("<I I i i H H I",
                                                                                head, 10)
    if info_size < 40 or compression not in (0, 3) or bits not in (1, 4, 8, 16, 24, 32):
        return None
    row = (abs(width) * bits + 31) // 32 * 4
    expected = row * abs(height)
    return _DataLayout(path, offset, expected=expected,
                       shape=f"{abs(height)} rows of {row} bytes")


def _read_dicom_series(folder: Path, limits: ImageLimits) -> tuple[sitk.Image, str | None]:
    """Read the DICOM series with most files in ``folder`` (its size, from the header of
    its first file times the file count, checked against ``limits`` first)."""
    try:
        with _itk_warnings_silenced():
            series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
            files = {sid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series_ids}
    except RuntimeError as error:
        raise InputError(f"could not scan folder {folder} for DICOM: {itk_error_message(error)}") from None
    if not series_ids:
        raise InputError(f"folder contains no DICOM series: {folder}")
    largest = max(series_ids, key=lambda sid: len(files[sid]))
    first = sitk.ImageFileReader()
    first.SetImageIO("GDCMImageIO")
    first.SetFileName(files[largest][0])
    _prove_dicom_series([Path(name) for name in files[largest]], limits)
    _prove_left_out_files(folder, {Path(name).name for names in files.values() for name in names},
                          limits)
    _checked_header(first, Path(files[largest][0]), "GDCMImageIO", limits,
                    count=len(files[largest]))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files[largest])
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise InputError(f"could not read the DICOM series in {folder}: {itk_error_message(error)}") from None
    has_tag = reader.HasMetaDataKey(0, _DICOM_MODALITY_TAG)
    return image, reader.GetMetaData(0, _DICOM_MODALITY_TAG) if has_tag else None


def _prove_dicom_series(paths: Sequence[Path], limits: ImageLimits) -> None:
    """Every file of a series proven (:func:`_prove_dicom_file`; the first one's header
    checked against ``limits`` for the whole series), all of one size."""
    sizes = {}
    for index, path in enumerate(paths):
        size = _prove_dicom_file(path, limits, count=len(paths) if index == 0 else 1)
        if size is not None:
            sizes[path] = size
    if len(set(sizes.values())) > 1:
        first, *_ = sizes
        other = next(p for p in sizes if sizes[p] != sizes[first])
        raise InputError(f"could not read the DICOM series in {first.parent}: {first.name} is "
                         f"{sizes[first][0]} x {sizes[first][1]} but {other.name} is "
                         f"{sizes[other][0]} x {sizes[other][1]} (Rows x Columns); read the "
                         "files separately or fix the series")


def _prove_left_out_files(folder: Path, listed: set[str], limits: ImageLimits) -> None:
    """GDCM leaves a damaged file out of its series without a word (a cut-off slice
    would leave a gap): the DICOM files of ``folder`` in no series are proven too, so a
    damaged one is refused with its reason (files without pixel data pass)."""
    try:
        names = sorted(entry.name for entry in os.scandir(folder) if entry.is_file())
    except OSError as error:
        raise InputError(f"could not scan folder {folder} for DICOM: "
                         f"{error.strerror or error}") from None
    for name in names:
        path = folder / name
        if name not in listed and _has_dicom_preamble(path):
            _prove_dicom_file(path, limits)


def _as_scalar_3d(image: sitk.Image, source: str) -> sitk.Image:
    """Grey-level 3-D version of ``image``: colour to luminance, 2-D to one slice."""
    image = _to_grayscale(image, source)
    dimension = image.GetDimension()
    size = image.GetSize()
    if 0 in size:
        raise InputError(f"image has a zero-size axis (size {size}): {source}")
    volume: sitk.Image = image
    if dimension == 2:
        volume = sitk.JoinSeries([image])
    elif dimension == 4 and size[3] == 1:
        volume = sitk.Extract(image, [size[0], size[1], size[2], 0], [0, 0, 0, 0])
    elif dimension != 3:
        raise InputError(f"{dimension}-D images are not supported: {source} has size {size}")
    return volume


def _to_grayscale(image: sitk.Image, source: str) -> sitk.Image:
    """Scalar float32 image: 1 component kept, 2 (grey + alpha) -> first, 3/4 (RGB[A]) -> luminance."""
    components = image.GetNumberOfComponentsPerPixel()
    if components == 1:
        return image
    if components > 4:
        raise InputError(f"vector images with {components} components per voxel are not supported: {source}")
    grey: sitk.Image
    if components == 2:
        grey = sitk.VectorIndexSelectionCast(image, 0, sitk.sitkFloat32)
    else:
        channels = [sitk.VectorIndexSelectionCast(image, c, sitk.sitkFloat32) for c in range(3)]
        red, green, blue = (channel * weight for channel, weight in zip(channels, _LUMA_WEIGHTS, strict=True))
        grey = red + green + blue
    return grey


#: voxels checked at once for NaN/Inf (bounds the temporary mask)
_FINITE_CHUNK = 1 << 22


def _checked_voxels(values: np.ndarray, source: str, copy: bool = False,
                    stored_type: bool = False) -> np.ndarray:
    """``values`` as float32, or in their own type when ``stored_type`` and that is one
    of :data:`STORED_TYPES` (a copy when ``copy``, e.g. of a view of a SimpleITK image),
    after checking for empty axes and NaN/Inf; no temporary larger than a chunk."""
    if 0 in values.shape:
        raise InputError(f"image has a zero-size axis (shape {values.shape}): {source}")
    dtype = kept_type(values.dtype) if stored_type else np.dtype(np.float32)
    if copy:
        array = np.array(values, dtype=dtype, order="C", copy=True)
    else:
        array = np.ascontiguousarray(values, dtype=dtype)
    if dtype != np.float32:
        return array  # integers are always finite
    flat = array.reshape(-1)
    bad = 0
    for start in range(0, flat.size, _FINITE_CHUNK):
        part = flat[start:start + _FINITE_CHUNK]
        bad += int(part.size - np.count_nonzero(np.isfinite(part)))
    if bad:
        raise InputError(f"image contains {bad} NaN/Inf voxels: {source}")
    return array


# --------------------------------------------------------------------------- modality


def _normalise_modality(modality: str | None) -> str | None:
    if modality is None:
        return None
    code = str(modality).strip().upper()
    if code not in MODALITIES:
        raise InputError(f"unknown modality {modality!r}: expected one of {', '.join(MODALITIES)}")
    return code


def _modality_from_tag(tag: str) -> str:
    code = tag.strip().upper()
    return code if code in ("CT", "MR") else "OT"


def _looks_like_hounsfield(array: np.ndarray) -> bool:
    low, high = _CT_MINIMUM_RANGE
    return low <= float(array.min()) <= high


def _guess_medical_modality(array: np.ndarray) -> str:
    """``CT`` for Hounsfield-like values, else ``MR`` (medical file formats only)."""
    return "CT" if _looks_like_hounsfield(array) else "MR"


# --------------------------------------------------------------------------- arrays


def image_from_array(
    array: np.ndarray,
    spacing: Sequence[float] | None = None,
    origin: Sequence[float] | None = None,
    direction: Sequence[float] | None = None,
    modality: str | None = None,
    *,
    stored_type: bool = False,
) -> MedicalImage:
    """Wrap a numpy array as a :class:`MedicalImage`.

    Args:
        array: 2-D ``(H, W)`` = ``(y, x)`` or 3-D ``(z, y, x)``; any real numeric or bool dtype.
        spacing: mm, ITK order ``(x, y, z)``; ``(x, y)`` is accepted for 2-D arrays. Default 1 mm.
        origin: LPS mm; ``(x, y)`` is accepted for 2-D arrays. Default 0.
        direction: 9 values, row-major orthonormal 3x3. Default identity.
        modality: ``CT``/``MR``/``OT``; when None, ``CT`` if the values look like
            Hounsfield units, else ``OT``.
        stored_type: keep an array of one of :data:`STORED_TYPES` in its type (else
            float32).
    """
    requested = _normalise_modality(modality)
    data = np.asarray(array)
    if data.ndim not in (2, 3):
        raise InputError(f"image array must be 2-D (H, W) or 3-D (z, y, x), got {data.ndim}-D with shape {data.shape}")
    if data.dtype != np.bool_ and (not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data)):
        raise InputError(f"image array must have a real numeric dtype, got {data.dtype}")
    was_2d = data.ndim == 2
    volume = _checked_voxels(data[np.newaxis] if was_2d else data, "<array>",
                             stored_type=stored_type)
    chosen = requested or ("CT" if _looks_like_hounsfield(volume) else "OT")
    return MedicalImage(
        array=volume,
        spacing=_check_spacing(_pad_to_3(spacing, 1.0, "spacing", was_2d)) if spacing is not None else (1.0, 1.0, 1.0),
        origin=_check_origin(_pad_to_3(origin, 0.0, "origin", was_2d)) if origin is not None else (0.0, 0.0, 0.0),
        direction=_check_direction(direction) if direction is not None else _IDENTITY_DIRECTION,
        modality=chosen,
        source="<array>",
        is_2d=volume.shape[0] == 1,
    )


def _pad_to_3(values: Sequence[float], fill: float, what: str, allow_two: bool) -> tuple[float, ...]:
    """``values`` with a third entry ``fill`` appended when 2 were given for a 2-D array."""
    try:
        items = tuple(values)
    except TypeError:
        raise InputError(f"{what} must be a sequence of numbers, got {values!r}") from None
    if allow_two and len(items) == 2:
        return (*items, fill)
    if len(items) != 3:
        raise InputError(f"{what} must have 3 values (x, y, z), got {len(items)}")
    return items


def _floats(values: Sequence[float], count: int, what: str) -> tuple[float, ...]:
    try:
        items = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be {count} numbers, got {values!r}") from None
    if len(items) != count:
        raise InputError(f"{what} must have {count} values, got {len(items)}")
    if not all(np.isfinite(items)):
        raise InputError(f"{what} must be finite, got {items}")
    return items


def _check_spacing(spacing: Sequence[float]) -> Vector3:
    x, y, z = _floats(spacing, 3, "spacing")
    if min(x, y, z) <= 0:
        raise InputError(f"spacing must be positive, got {(x, y, z)}")
    return (x, y, z)


def _check_origin(origin: Sequence[float]) -> Vector3:
    x, y, z = _floats(origin, 3, "origin")
    return (x, y, z)


def _check_direction(direction: Sequence[float]) -> tuple[float, ...]:
    values = _floats(direction, 9, "direction")
    matrix = np.reshape(values, (3, 3))
    if not np.allclose(matrix @ matrix.T, np.eye(3), atol=_ORTHONORMAL_TOLERANCE):
        raise InputError(f"direction must be an orthonormal 3x3 matrix (row-major), got {values}")
    return values


def _vector3(values: Sequence[float]) -> Vector3:
    x, y, z = (float(v) for v in values)
    return (x, y, z)


# --------------------------------------------------------------------------- writing


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the folder of ``path``; move it onto ``path`` on success
    (:func:`medsegr.io.atomic.atomic_path`).

    The temporary name keeps the extension of ``path`` (so writers that choose the
    format by extension work) and starts with a dot. On any exception it is
    deleted, leaving ``path`` untouched: readers never see a half-written file.
    """
    target = Path(path)
    folder = target.parent
    if not folder.is_dir():
        raise InputError(f"output folder does not exist: {folder}")
    extension = ".seg.nrrd" if target.name.lower().endswith(".seg.nrrd") else file_extension(target)
    with atomic_path(target, suffix=extension) as temporary:
        yield temporary


def write_image(
    path: str | os.PathLike[str],
    image: MedicalImage | sitk.Image,
    *,
    compress: bool = True,
) -> Path:
    """Atomically write ``image`` to a single-file ``.nrrd``, ``.nii``, ``.nii.gz`` or ``.mha``.

    A :class:`MedicalImage` is written in its voxel type with its geometry; a SimpleITK
    image is written as it is (pixel type and geometry). Returns the path written.
    """
    target = Path(path)
    if file_extension(target) not in WRITABLE_EXTENSIONS:
        raise InputError(f"cannot write {target}: the file name must end in {', '.join(WRITABLE_EXTENSIONS)}")
    sitk_image = image.to_sitk() if isinstance(image, MedicalImage) else image
    with atomic_output(target) as temporary:
        try:
            sitk.WriteImage(sitk_image, str(temporary), useCompression=compress)
        except RuntimeError as error:
            raise InputError(f"could not write image {target}: {itk_error_message(error)}") from None
    return target


# --------------------------------------------------------------------------- helpers


_FORMAT_NAMES = {
    "NrrdImageIO": "NRRD",
    "NiftiImageIO": "NIfTI",
    "MetaImageIO": "MetaImage",
    "GDCMImageIO": "DICOM",
    "PNGImageIO": "PNG",
    "JPEGImageIO": "JPEG",
    "BMPImageIO": "BMP",
    "TIFFImageIO": "TIFF",
}


def _format_name(io_name: str) -> str:
    return _FORMAT_NAMES.get(io_name, io_name)


_ITK_PREFIX = re.compile(r"^(ITK ERROR: )?\w+ ?\(0x[0-9a-fA-F]+\): ")


def itk_error_message(error: Exception) -> str:
    """The most telling line of a SimpleITK/ITK exception, without object addresses."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if "Description:" in line:
            return _ITK_PREFIX.sub("", line.split("Description:", 1)[1].strip())
    for line in reversed(lines):
        if not line.startswith(("sitk::ERROR", "Exception thrown", "Location:", "File:", "Line:")):
            return _ITK_PREFIX.sub("", line)
    return lines[-1] if lines else type(error).__name__


@contextlib.contextmanager
def _itk_warnings_silenced() -> Iterator[None]:
    """Keep ITK from printing warnings (e.g. "No Series were found") to stderr."""
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)
