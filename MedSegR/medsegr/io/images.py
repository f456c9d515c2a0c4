"""Loading, validating and writing medical images.

Conventions used throughout MedSegR
-----------------------------------
* ``MedicalImage.array`` is ``float32`` in numpy order ``(z, y, x)``: the slowest
  axis is the slice axis ``k``, the fastest the column axis ``i``. It is always
  3-D; a 2-D picture becomes shape ``(1, H, W)``.
* ``spacing``, ``origin`` and ``direction`` follow ITK: spacing is in index order
  ``(x, y, z)`` = ``(i, j, k)`` in mm, the origin is the physical position of voxel
  ``(0, 0, 0)`` in LPS coordinates (mm), and ``direction`` is the 3x3 matrix,
  row-major, whose column ``c`` is the unit vector of index axis ``c`` in LPS.
  So ``lps = origin + direction @ (spacing * (i, j, k))``.
  3D Slicer works in RAS: its IJK-to-RAS matrix is this one with the first two
  rows (x and y) negated.

All file formats go through SimpleITK. Every problem a user can cause raises
:class:`medsegr.errors.InputError` with a one-line message.
"""

from __future__ import annotations

import contextlib
import os
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medsegr.errors import InputError
from medsegr.io.atomic import atomic_path
from medsegr.io.limits import ImageLimits

__all__ = [
    "MODALITIES",
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
        array: ``float32`` voxel values, numpy order ``(z, y, x)``, always 3-D.
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
        if self.array.dtype != np.float32:
            raise InputError(f"MedicalImage.array must be float32, got {self.array.dtype}")
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
               limits: ImageLimits | None = None) -> MedicalImage:
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
    array = _checked_voxels(sitk.GetArrayFromImage(image), str(source))
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

    The header is read first and checked against ``limits``; only then the voxels."""
    reader = sitk.ImageFileReader()
    reader.SetImageIO(io_name)
    reader.SetFileName(str(path))
    gzipped = path.name.lower().endswith(".gz")
    if gzipped and not _has_gzip_magic(path):
        raise InputError(f"could not read image {path}: not a valid gzip file (no gzip header)")
    declared = _checked_header(reader, path, io_name, limits, count=1)
    if gzipped:
        _check_gzip_stream(path, declared + _GZIP_HEADER_SLACK)
    elif io_name == "NrrdImageIO":
        _check_nrrd_gzip(path, declared)
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


#: bytes a gzip-compressed file may inflate to beyond its declared voxel data
#: (the format header and, for NIfTI, its extensions)
_GZIP_HEADER_SLACK = 16 * 1024 * 1024


def _check_gzip_stream(path: Path, max_inflated: int, offset: int = 0) -> None:
    """ITK reads a cut-off gzip stream without complaint (the missing voxels come back
    as zeros), so the compressed data of ``path`` (from byte ``offset``) is checked to its
    end first, inflating at most ``max_inflated`` bytes: a small file that inflates
    further than its header declares is refused without holding the inflated data."""
    chunk_out = 1 << 22
    total = 0
    inflater = None
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            while chunk := handle.read(1 << 20):
                data = chunk
                while data or inflater is not None:
                    if inflater is None:
                        if not data.strip(b"\0"):  # zero padding after the data
                            break
                        inflater = zlib.decompressobj(32 + zlib.MAX_WBITS)  # gzip or zlib
                    out = inflater.decompress(data, chunk_out)
                    total += len(out)
                    if total > max_inflated:
                        raise InputError(f"could not read image {path}: its compressed data "
                                         f"inflates past {max_inflated:,} bytes, more than its "
                                         "header declares")
                    if inflater.eof:
                        data, inflater = inflater.unused_data, None
                        continue
                    data = inflater.unconsumed_tail
                    if not data and len(out) < chunk_out:
                        break  # needs more input
    except zlib.error as error:
        raise InputError(f"could not read image {path}: not a valid gzip file ({error})") from None
    except OSError as error:
        raise InputError(f"could not read image {path}: {error.strerror or error}") from None
    if inflater is not None:
        raise InputError(f"could not read image {path}: the compressed file is truncated")


_NRRD_FIELD = re.compile(r"^([^:#][^:]*):[ \t]*(.*?)\s*$")


def _check_nrrd_gzip(path: Path, max_inflated: int) -> None:
    """For a gzip-encoded NRRD, bound and check its compressed data like a ``.gz`` file
    (attached data, or a detached ``data file`` beside the header)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(MAX_NRRD_HEADER_BYTES)
    except OSError as error:
        raise InputError(f"could not read image {path}: {error.strerror or error}") from None
    end = head.find(b"\n\n")
    if end < 0:
        return  # ITK reports the malformed header
    fields = {}
    for line in head[:end].decode("latin-1").splitlines()[1:]:
        match = _NRRD_FIELD.match(line)
        if match and ":=" not in line:
            fields[match.group(1).strip().lower()] = match.group(2)
    if fields.get("encoding", "").strip().lower() not in ("gzip", "gz"):
        return
    if any(fields.get(name, "0").strip() != "0" for name in ("line skip", "lineskip",
                                                              "byte skip", "byteskip")):
        return  # skipped bytes: ITK's reader alone knows where the data starts
    detached = fields.get("data file") or fields.get("datafile")
    if detached is None:
        _check_gzip_stream(path, max_inflated, offset=end + 2)
        return
    data_path = Path(detached.strip())
    if not data_path.is_absolute():
        data_path = path.parent / data_path
    if data_path.is_file():
        _check_gzip_stream(data_path, max_inflated)


#: the longest NRRD header read when looking for its encoding
MAX_NRRD_HEADER_BYTES = 64 * 1024


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


def _checked_voxels(values: np.ndarray, source: str) -> np.ndarray:
    """``values`` as float32 after checking for empty axes and NaN/Inf."""
    if 0 in values.shape:
        raise InputError(f"image has a zero-size axis (shape {values.shape}): {source}")
    array = np.ascontiguousarray(values, dtype=np.float32)
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
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
) -> MedicalImage:
    """Wrap a numpy array as a :class:`MedicalImage`.

    Args:
        array: 2-D ``(H, W)`` = ``(y, x)`` or 3-D ``(z, y, x)``; any real numeric or bool dtype.
        spacing: mm, ITK order ``(x, y, z)``; ``(x, y)`` is accepted for 2-D arrays. Default 1 mm.
        origin: LPS mm; ``(x, y)`` is accepted for 2-D arrays. Default 0.
        direction: 9 values, row-major orthonormal 3x3. Default identity.
        modality: ``CT``/``MR``/``OT``; when None, ``CT`` if the values look like
            Hounsfield units, else ``OT``.
    """
    requested = _normalise_modality(modality)
    data = np.asarray(array)
    if data.ndim not in (2, 3):
        raise InputError(f"image array must be 2-D (H, W) or 3-D (z, y, x), got {data.ndim}-D with shape {data.shape}")
    if data.dtype != np.bool_ and (not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data)):
        raise InputError(f"image array must have a real numeric dtype, got {data.dtype}")
    was_2d = data.ndim == 2
    volume = _checked_voxels(data[np.newaxis] if was_2d else data, "<array>")
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

    A :class:`MedicalImage` is written as float32 with its geometry; a SimpleITK
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
