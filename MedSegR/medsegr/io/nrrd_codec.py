"""NRRD encoding and decoding in memory, with numpy and the standard library only.

This is the wire format between the MedSegR engine server and its clients (the 3D
Slicer module among them), so it must import nothing heavy: no SimpleITK, no torch.

Conventions (the same as :mod:`medsegr.io.images`):

* arrays are numpy ``(z, y, x)``: NRRD's ``sizes`` list the fastest axis first, so
  a C-ordered ``(z, y, x)`` array is written as ``sizes: x y z``;
* ``spacing`` is ITK order ``(x, y, z)`` in mm, ``origin`` the LPS position of voxel
  ``(0, 0, 0)``, ``direction`` the row-major 3x3 ITK matrix whose column ``c`` is
  the LPS unit vector of index axis ``c``;
* files are written in ``space: left-posterior-superior``; reading also accepts
  ``right-anterior-superior`` (converted to LPS).

``space directions`` holds ``direction[:, c] * spacing[c]``; recovering spacing and
direction from those products is not bit-exact in floating point, so
:func:`encode_nrrd` also writes the exact values as ``medsegr_spacing:=`` and
``medsegr_direction:=`` key/value pairs. :func:`decode_nrrd` uses them only when their
products are exactly the ``space directions`` vectors (so a file another tool edited
decodes by the standard rules), which makes an encode/decode round trip exact, also for
direction matrices that are orthonormal only to float precision.

Decoding is strict: a malformed header, an unsupported field value, data whose size
does not match the header, or declared sizes above ``max_voxels`` raise
:class:`NrrdError` (or :class:`NrrdTooLarge`) with a one-line reason, before any
large allocation. :func:`nrrd_info` reads the header alone (from the first bytes of a
file or upload), so a caller learns the decoded size before any data is decoded.

:func:`inflate_gzip` inflates concatenated gzip members in time linear in the input (a
file of many tiny members costs no more than one member of the same size); the image
readers of :mod:`medsegr.io.images` check ``.gz`` files with it too.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from medsegr.errors import InputError
from medsegr.io.limits import ImageLimits, ImageTooLarge

__all__ = [
    "DEFAULT_MAX_VOXELS",
    "GzipStreamError",
    "NrrdError",
    "NrrdInfo",
    "NrrdTooLarge",
    "decode_nrrd",
    "encode_nrrd",
    "inflate_gzip",
    "nrrd_dtype",
    "nrrd_header",
    "nrrd_info",
    "short_number",
    "space_directions",
]

#: the most voxels :func:`decode_nrrd` accepts unless told otherwise (1024^3)
DEFAULT_MAX_VOXELS = 1024**3
#: a header longer than this is refused (real headers are well under 2 KiB)
MAX_HEADER_BYTES = 64 * 1024

_LPS = "left-posterior-superior"
_RAS = "right-anterior-superior"
_SPACE_NAMES = {"left-posterior-superior": _LPS, "lps": _LPS,
                "right-anterior-superior": _RAS, "ras": _RAS}

#: NRRD type names (all standard spellings) -> numpy dtype (native byte order)
_NRRD_TYPES: dict[str, np.dtype] = {}
for _names, _dtype in (
    (("signed char", "int8", "int8_t"), np.int8),
    (("uchar", "unsigned char", "uint8", "uint8_t"), np.uint8),
    (("short", "short int", "signed short", "signed short int", "int16", "int16_t"), np.int16),
    (("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"), np.uint16),
    (("int", "signed int", "int32", "int32_t"), np.int32),
    (("uint", "unsigned int", "uint32", "uint32_t"), np.uint32),
    (("longlong", "long long", "long long int", "signed long long", "signed long long int",
      "int64", "int64_t"), np.int64),
    (("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"),
     np.uint64),
    (("float",), np.float32),
    (("double",), np.float64),
):
    for _name in _names:
        _NRRD_TYPES[_name] = np.dtype(_dtype)

#: numpy dtype -> the NRRD type name written by :func:`encode_nrrd`
_WRITE_TYPES = {np.dtype(np.int8): "int8", np.dtype(np.uint8): "uint8",
                np.dtype(np.int16): "int16", np.dtype(np.uint16): "uint16",
                np.dtype(np.int32): "int32", np.dtype(np.uint32): "uint32",
                np.dtype(np.int64): "int64", np.dtype(np.uint64): "uint64",
                np.dtype(np.float32): "float", np.dtype(np.float64): "double"}

_SPATIAL_KINDS = {"domain", "space", "time", "???", "none"}
_VECTOR_RE = re.compile(r"\(([^()]*)\)|none")


class NrrdError(InputError):
    """The bytes are not an NRRD this codec can read (or the arguments cannot be written)."""

    code = "bad_nrrd"


class NrrdTooLarge(NrrdError):
    """The NRRD declares more voxels than allowed."""

    code = "too_large"


# --------------------------------------------------------------------------- encoding


def encode_nrrd(array: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                origin: Sequence[float] = (0.0, 0.0, 0.0),
                direction: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
                encoding: str = "gzip", compresslevel: int = 1) -> bytes:
    """A complete attached-header NRRD file holding ``array``.

    Args:
        array: 3-D ``(z, y, x)`` array of a real numeric or bool dtype (bool is
            written as ``uint8`` 0/1).
        spacing: voxel size in mm, ITK order ``(x, y, z)``; positive and finite.
        origin: LPS position of voxel ``(0, 0, 0)``, mm.
        direction: row-major 3x3 ITK direction matrix (9 values).
        encoding: ``"gzip"`` or ``"raw"``.
        compresslevel: gzip level 1 (fast) .. 9 (small).
    """
    data = np.asarray(array)
    if data.ndim != 3:
        raise NrrdError(f"encode_nrrd needs a 3-D (z, y, x) array, got shape {data.shape}")
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    base = np.dtype(data.dtype.type)  # native byte order
    type_name = _WRITE_TYPES.get(base)
    if type_name is None:
        raise NrrdError(f"cannot write arrays of dtype {data.dtype} as NRRD")
    sp = _finite(spacing, 3, "spacing")
    if any(s <= 0 for s in sp):
        raise NrrdError(f"spacing must be positive, got {sp}")
    org = _finite(origin, 3, "origin")
    dirs = _finite(direction, 9, "direction")
    if encoding not in ("gzip", "raw"):
        raise NrrdError(f"encoding must be 'gzip' or 'raw', not {encoding!r}")

    z, y, x = (int(n) for n in data.shape)
    header = nrrd_header(type_name, (x, y, z), ("domain", "domain", "domain"),
                         space_directions(sp, dirs), org, encoding=encoding,
                         fields=[("medsegr_spacing", " ".join(repr(v) for v in sp)),
                                 ("medsegr_direction", " ".join(repr(v) for v in dirs))])
    payload = np.ascontiguousarray(data).astype(base.newbyteorder("<"), copy=False).tobytes()
    if encoding == "gzip":
        compressor = zlib.compressobj(int(compresslevel), zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        payload = compressor.compress(payload) + compressor.flush()
    return header + payload


def nrrd_header(type_name: str, sizes: Sequence[int], kinds: Sequence[str],
                directions: Sequence[Sequence[float] | None], origin: Sequence[float], *,
                encoding: str, endian: bool = True, fields: Sequence[tuple[str, str]] = (),
                number: Callable[[float], str] = repr) -> bytes:
    """An attached-header NRRD0004 header in LPS space, ending in its blank line.

    The one header writer of the project (:func:`encode_nrrd`, and the 3D Slicer
    segmentations of :mod:`medsegr.io.segmentation_files`).

    Args:
        type_name: the NRRD type as written, e.g. ``"uint8"`` or ``"unsigned char"``.
        sizes: the size of each axis, fastest first (``dimension`` is their count).
        kinds: the kind of each axis, e.g. ``"domain"`` or ``"list"``.
        directions: per axis its LPS direction vector in mm (:func:`space_directions`),
            or ``None`` for a non-spatial axis (written ``none``).
        origin: LPS position of the first voxel, mm.
        encoding: ``"gzip"`` or ``"raw"``.
        endian: write ``endian: little`` (required for types wider than one byte).
        fields: ``key:=value`` pairs, written in this order after the standard fields;
            each one line of text.
        number: how a coordinate is written (applied to ``float(value)``; ``repr``
            or :func:`short_number`).
    """
    def vector(values: Sequence[float]) -> str:
        return "(" + ",".join(number(float(v)) for v in values) + ")"

    lines = [
        "NRRD0004",
        "# Complete NRRD file format specification at:",
        "# http://teem.sourceforge.net/nrrd/format.html",
        f"type: {type_name}",
        f"dimension: {len(sizes)}",
        f"space: {_LPS}",
        "sizes: " + " ".join(str(int(n)) for n in sizes),
        "space directions: " + " ".join("none" if d is None else vector(d) for d in directions),
        "kinds: " + " ".join(kinds),
        *(["endian: little"] if endian else []),
        f"encoding: {encoding}",
        f"space origin: {vector(origin)}",
        *(f"{key}:={value}" for key, value in fields),
    ]
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def space_directions(spacing: Sequence[float], direction: Sequence[float]) -> list[list[float]]:
    """The NRRD ``space directions`` of the three index axes: column ``c`` of the
    row-major ITK ``direction`` matrix times ``spacing[c]``."""
    return [[float(direction[r * 3 + c]) * float(spacing[c]) for r in range(3)] for c in range(3)]


def short_number(value: float) -> str:
    """Shortest text that reads back as the same float (``1`` rather than ``1.0``)."""
    number = float(value)
    return str(int(number)) if number.is_integer() and abs(number) < 1e15 else repr(number)


def _finite(values: Sequence[float], count: int, what: str) -> tuple[float, ...]:
    try:
        items = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise NrrdError(f"{what} must be {count} numbers, got {values!r}") from None
    if len(items) != count:
        raise NrrdError(f"{what} must have {count} values, got {len(items)}")
    if not all(math.isfinite(v) for v in items):
        raise NrrdError(f"{what} must be finite, got {items}")
    return items


# --------------------------------------------------------------------------- decoding


@dataclass(frozen=True)
class NrrdInfo:
    """What an attached-header NRRD declares, read from its header alone."""

    #: axis sizes, fastest first (as in the header)
    sizes: tuple[int, ...]
    #: the voxel type, in the byte order of the data
    dtype: np.dtype
    #: ``"raw"`` or ``"gzip"``
    encoding: str
    #: where the data starts (bytes from the start of the file)
    data_offset: int
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @property
    def voxels(self) -> int:
        return math.prod(self.sizes)

    @property
    def decoded_bytes(self) -> int:
        """Bytes of voxel data once decoded (inflated), as the header declares them."""
        return self.voxels * self.dtype.itemsize

    @property
    def float32_bytes(self) -> int:
        """Bytes the image takes as float32 (the engine's working copy)."""
        return self.voxels * 4


def nrrd_info(data: bytes | bytearray | memoryview, max_voxels: int = DEFAULT_MAX_VOXELS,
              limits: ImageLimits | None = None) -> NrrdInfo:
    """Read and check the header of an attached-header NRRD; the data is not touched.

    ``data`` may be the whole file or only its first bytes (the header ends within
    :data:`MAX_HEADER_BYTES`). Every field is checked (sizes positive, geometry finite)
    and the sizes against ``max_voxels`` and ``limits`` before the caller allocates
    anything: ``nrrd_info(body).decoded_bytes`` is the size of the decoded voxel data.

    Raises:
        NrrdTooLarge: more than ``max_voxels`` voxels, or beyond ``limits``.
        NrrdError: a malformed or unsupported header.
    """
    raw = memoryview(data).cast("B")[:MAX_HEADER_BYTES + 4].tobytes()
    if not raw.startswith(b"NRRD000"):
        raise NrrdError("not an NRRD file (it must start with 'NRRD000N')")
    end, body_start = _header_end(raw)
    try:
        text = raw[:end].decode("ascii")
    except UnicodeDecodeError:
        raise NrrdError("the NRRD header is not ASCII text") from None
    lines = text.split("\n")
    magic = lines[0].rstrip("\r")
    if magic not in {f"NRRD000{n}" for n in range(1, 6)}:
        raise NrrdError(f"unsupported NRRD version {magic!r} (NRRD0001..NRRD0005)")
    fields, keyvalues = _parse_fields(lines[1:])

    dimension = _int_field(fields, "dimension")
    if dimension not in (2, 3):
        raise NrrdError(f"only 2-D and 3-D scalar NRRDs are accepted, this one has dimension {dimension}")
    sizes = _ints(_required(fields, "sizes"), "sizes")
    if len(sizes) != dimension:
        raise NrrdError(f"'sizes' has {len(sizes)} values but dimension is {dimension}")
    if any(s < 1 for s in sizes):
        raise NrrdError(f"'sizes' must be positive, got {sizes}")
    if limits is not None:  # sides and voxels now, bytes once the type is known
        _check_limits(limits, sizes, 1)
    voxels = math.prod(sizes)
    if voxels > max_voxels:
        raise NrrdTooLarge(f"the NRRD declares {voxels:,} voxels ({' x '.join(map(str, sizes))}); "
                           f"at most {max_voxels:,} are accepted")
    kinds = fields.get("kinds")
    if kinds is not None:
        names = kinds.split()
        if len(names) != dimension:
            raise NrrdError(f"'kinds' has {len(names)} values but dimension is {dimension}")
        odd = [k for k in names if k.lower() not in _SPATIAL_KINDS]
        if odd:
            raise NrrdError(f"only scalar images are accepted; axis kind(s) {', '.join(odd)} "
                            "are not spatial")

    type_name = " ".join(_required(fields, "type").split()).lower()
    dtype = nrrd_dtype(type_name)
    if dtype is None:
        raise NrrdError(f"unsupported NRRD type {type_name!r}")
    if limits is not None:
        _check_limits(limits, sizes, dtype.itemsize)
    if dtype.itemsize > 1:
        endian = _required(fields, "endian").strip().lower()
        if endian not in ("little", "big"):
            raise NrrdError(f"'endian' must be little or big, not {endian!r}")
        dtype = dtype.newbyteorder("<" if endian == "little" else ">")
    for name in ("data file", "datafile"):
        if name in fields:
            raise NrrdError("detached NRRD headers ('data file') are not accepted; send one "
                            "attached .nrrd file")
    for name in ("line skip", "lineskip", "byte skip", "byteskip"):
        if name in fields and fields[name].strip() != "0":
            raise NrrdError(f"'{name}' is not supported")
    encoding = _required(fields, "encoding").strip().lower()
    if encoding not in ("raw", "gzip", "gz"):
        raise NrrdError(f"unsupported NRRD encoding {encoding!r} (raw or gzip)")

    spacing, origin, direction = _geometry(fields, keyvalues, dimension)
    return NrrdInfo(tuple(sizes), dtype, "raw" if encoding == "raw" else "gzip", body_start,
                    spacing, origin, direction)


def nrrd_dtype(type_name: str) -> np.dtype | None:
    """The numpy dtype (native byte order) of an NRRD ``type`` value, any standard
    spelling (``"unsigned short"``, ``"uint16"``...); None when unknown."""
    return _NRRD_TYPES.get(" ".join(type_name.split()).lower())


def decode_nrrd(data: bytes | bytearray | memoryview, max_voxels: int = DEFAULT_MAX_VOXELS,
                limits: ImageLimits | None = None) -> tuple[np.ndarray, tuple[float, float, float], tuple[float, float, float],
                           tuple[float, ...]]:
    """Read an attached-header NRRD from memory.

    Returns ``(array, spacing, origin, direction)``: the array in numpy order
    ``(z, y, x)`` with a native-endian dtype, and the geometry in ITK/LPS
    conventions (see the module docstring). A 2-D NRRD becomes ``(1, y, x)`` with
    unit spacing along the added axis.

    The header is checked first (:func:`nrrd_info`); raw data must be exactly the
    declared size, and gzip data is inflated (linearly, also over many members) to
    at most the declared size.

    Raises:
        NrrdTooLarge: the header declares more than ``max_voxels`` voxels, or an image
            beyond ``limits`` (voxels, longest side, decoded bytes; the same
            :class:`medsegr.io.limits.ImageLimits` ``medsegr ask`` applies to files).
        NrrdError: anything else that makes the file unreadable or inconsistent.
    """
    view = memoryview(data).cast("B")
    info = nrrd_info(view, max_voxels=max_voxels, limits=limits)
    payload = view[info.data_offset:]
    expected = info.decoded_bytes
    shown = f"{' x '.join(map(str, info.sizes))} x {info.dtype.itemsize}"
    if info.encoding == "raw":
        if len(payload) != expected:
            raise NrrdError(f"the NRRD data has {len(payload):,} bytes but its header declares "
                            f"{expected:,} ({shown})")
        decoded: bytes | bytearray | memoryview = payload
    else:
        decoded = _gunzip_exactly(payload, expected)

    shape = tuple(reversed(info.sizes))
    array = np.frombuffer(decoded, dtype=info.dtype).reshape(shape)
    native = info.dtype.newbyteorder("=")
    if isinstance(decoded, bytearray) and info.dtype == native:
        pass  # a fresh, writable buffer of the decoder's own: no copy needed
    else:
        array = array.astype(native, copy=True)  # native order, writable, owns its data
    if len(info.sizes) == 2:
        array = array[np.newaxis]
    return array, info.spacing, info.origin, info.direction


def _check_limits(limits: ImageLimits, sizes: list[int], itemsize: int) -> None:
    try:
        limits.check(sizes, itemsize, "the NRRD")
    except ImageTooLarge as exc:
        raise NrrdTooLarge(str(exc)) from None


def _header_end(raw: bytes) -> tuple[int, int]:
    """(end of the header text, start of the data): the first empty line ends the header."""
    window = raw[:MAX_HEADER_BYTES + 2]
    match = re.search(rb"\r?\n\r?\n", window)
    if match is None:
        if len(raw) > MAX_HEADER_BYTES:
            raise NrrdError(f"no end of the NRRD header within {MAX_HEADER_BYTES} bytes")
        raise NrrdError("the NRRD header is not terminated by an empty line (truncated file?)")
    return match.start(), match.end()


def _parse_fields(lines: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    fields: dict[str, str] = {}
    keyvalues: dict[str, str] = {}
    for number, line in enumerate(lines, start=2):
        line = line.rstrip("\r")
        if not line or line.startswith("#"):
            continue
        if ":=" in line:
            key, value = line.split(":=", 1)
            keyvalues[key] = value
            continue
        if ": " not in line:
            raise NrrdError(f"malformed NRRD header line {number}: {line[:80]!r}")
        name, value = line.split(": ", 1)
        name = name.strip().lower()
        if name in fields:
            raise NrrdError(f"NRRD header field {name!r} appears twice")
        fields[name] = value.strip()
    return fields, keyvalues


def _required(fields: dict[str, str], name: str) -> str:
    value = fields.get(name)
    if value is None:
        raise NrrdError(f"the NRRD header has no '{name}' field")
    return value


def _int_field(fields: dict[str, str], name: str) -> int:
    values = _ints(_required(fields, name), name)
    if len(values) != 1:
        raise NrrdError(f"'{name}' must be one integer")
    return values[0]


def _ints(text: str, name: str) -> list[int]:
    try:
        return [int(v) for v in text.split()]
    except ValueError:
        raise NrrdError(f"'{name}' must be integers, got {text[:80]!r}") from None


def _floats(text: str, name: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise NrrdError(f"'{name}' must be numbers, got {text[:80]!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise NrrdError(f"'{name}' must be finite numbers, got {text[:80]!r}")
    return values


def _geometry(fields: dict[str, str], keyvalues: dict[str, str], dimension: int,
              ) -> tuple[tuple[float, float, float], tuple[float, float, float], tuple[float, ...]]:
    space_name = fields.get("space")
    space = None
    if space_name is not None:
        space = _SPACE_NAMES.get(space_name.strip().lower())
        if space is None:
            raise NrrdError(f"unsupported NRRD space {space_name!r} (left-posterior-superior "
                            "or right-anterior-superior)")
        if dimension == 2:
            raise NrrdError("a 2-D NRRD with a 3-D 'space' is not supported; send a 3-D NRRD "
                            "with one slice")
    elif "space dimension" in fields:
        raise NrrdError("NRRD 'space dimension' without a named 'space' is not supported")

    if "space directions" in fields:
        if space is None:
            raise NrrdError("'space directions' needs a 'space' field")
        vectors = []
        for match in _VECTOR_RE.finditer(fields["space directions"]):
            if match.group(0) == "none":
                raise NrrdError("'space directions' must give a vector for every axis")
            vectors.append(_floats(match.group(1), "space directions"))
        if len(vectors) != 3 or any(len(v) != 3 for v in vectors):
            raise NrrdError("'space directions' must be 3 vectors of 3 numbers")
        norms = [math.sqrt(sum(c * c for c in v)) for v in vectors]
        if min(norms) == 0.0:
            raise NrrdError("'space directions' has a zero-length axis")
        spacing = tuple(norms)
        direction = [0.0] * 9
        for c, (v, n) in enumerate(zip(vectors, norms)):
            for r in range(3):
                direction[r * 3 + c] = v[r] / n
        if space == _RAS:  # RAS -> LPS: negate x and y rows
            for c in range(3):
                direction[c] = -direction[c] if direction[c] else 0.0
                direction[3 + c] = -direction[3 + c] if direction[3 + c] else 0.0
        else:
            spacing, direction = _exact_geometry(keyvalues, vectors, spacing, direction)
    else:
        spacing = (1.0, 1.0, 1.0)
        if "spacings" in fields:
            values = _floats(fields["spacings"], "spacings")
            if len(values) != dimension or any(v <= 0 for v in values):
                raise NrrdError(f"'spacings' must be {dimension} positive numbers")
            spacing = tuple(values) + (1.0,) * (3 - dimension)
        direction = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]

    origin = (0.0, 0.0, 0.0)
    if "space origin" in fields:
        if space is None:
            raise NrrdError("'space origin' needs a 'space' field")
        match = _VECTOR_RE.fullmatch(fields["space origin"].strip())
        values = _floats(match.group(1), "space origin") if match and match.group(1) is not None else []
        if len(values) != 3:
            raise NrrdError("'space origin' must be one vector of 3 numbers, e.g. (0,0,0)")
        if space == _RAS:
            values = [-values[0], -values[1], values[2]]
        origin = tuple(values)
    return spacing, origin, tuple(direction)  # type: ignore[return-value]


def _exact_geometry(keyvalues: dict[str, str], vectors: list[list[float]],
                    spacing: tuple[float, ...], direction: list[float],
                    ) -> tuple[tuple[float, ...], list[float]]:
    """The exact ``medsegr_spacing``/``medsegr_direction`` values, when present and when
    their products are exactly the ``space directions`` vectors (as :func:`encode_nrrd`
    writes them); otherwise the values derived from the vectors."""
    try:
        exact_spacing = [float(v) for v in keyvalues["medsegr_spacing"].split()]
        exact_direction = [float(v) for v in keyvalues["medsegr_direction"].split()]
    except (KeyError, ValueError):
        return spacing, direction
    if len(exact_spacing) != 3 or len(exact_direction) != 9:
        return spacing, direction
    if space_directions(exact_spacing, exact_direction) != vectors:
        return spacing, direction  # edited by another tool: trust the vectors
    return tuple(exact_spacing), exact_direction


class GzipStreamError(ValueError):
    """gzip data that cannot be inflated; ``kind`` says why: ``"corrupt"``,
    ``"truncated"`` (cut short), ``"trailing"`` (other bytes after the last member) or
    ``"too_long"`` (it inflates past the allowed size)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


#: input fed to a fresh gzip member at first; doubled while the member goes on, so a
#: member costs time in proportion to its own size (never to what follows it)
_FIRST_FEED = 64
_MAX_FEED = 1 << 20
#: most bytes inflated per call
_OUT_PIECE = 1 << 22


def inflate_gzip(chunks: Iterable[bytes | bytearray | memoryview], max_out: int,
                 ) -> Iterator[bytes]:
    """Inflate gzip (or zlib) data arriving as ``chunks``, yielding the output in pieces.

    Concatenated members are one stream (as ``gzip -c a b`` writes them); zero bytes
    after the last member are padding. The work is linear in the input: each member is
    fed in slices that start small and double, so no call copies the data that follows
    the member (200,000 empty members take well under a second).

    Raises:
        GzipStreamError: corrupt data, data cut short, other bytes after the last member,
            or more than ``max_out`` bytes of output (found before holding them).
    """
    inflater = None
    feed = _FIRST_FEED
    total = 0
    members = 0
    padding = False
    for chunk in chunks:
        view = memoryview(chunk).cast("B")
        pos = 0
        while pos < len(view):
            if padding:
                if view[pos:].tobytes().strip(b"\0"):
                    raise GzipStreamError("other bytes follow the zero padding after the gzip "
                                          "data", "trailing")
                break
            if inflater is None:
                if view[pos] == 0 and members:
                    padding = True
                    continue
                if members and view[pos] != 0x1F:
                    raise GzipStreamError("unexpected bytes after the gzip data", "trailing")
                inflater = zlib.decompressobj(32 + zlib.MAX_WBITS)  # gzip or zlib header
                feed = _FIRST_FEED
            piece = view[pos:pos + feed]
            out = _decompress(inflater, piece)
            total += len(out)
            if total > max_out:
                raise GzipStreamError(f"the gzip data inflates past {max_out:,} bytes", "too_long")
            if out:
                yield out
            if inflater.eof:
                pos += len(piece) - len(inflater.unused_data)
                inflater = None
                members += 1
                continue
            left = len(inflater.unconsumed_tail)
            pos += len(piece) - left
            if not left:
                feed = min(2 * feed, _MAX_FEED)
    while inflater is not None and not inflater.eof:  # output still held inside
        out = _decompress(inflater, b"")
        if not out:
            break
        total += len(out)
        if total > max_out:
            raise GzipStreamError(f"the gzip data inflates past {max_out:,} bytes", "too_long")
        yield out
    if inflater is not None and not inflater.eof:
        raise GzipStreamError(f"the gzip data is cut short (truncated) after {total:,} "
                              "inflated bytes", "truncated")
    if not members and inflater is None:
        raise GzipStreamError("there is no gzip data", "truncated")


def _decompress(inflater: zlib._Decompress, data: bytes | memoryview) -> bytes:
    try:
        return inflater.decompress(data, _OUT_PIECE)
    except zlib.error as exc:
        raise GzipStreamError(f"the gzip data is corrupt ({exc})", "corrupt") from None


def _gunzip_exactly(payload: bytes | memoryview, expected: int) -> bytearray:
    """Decompress gzip (or zlib) ``payload`` that must hold exactly ``expected`` bytes,
    never inflating more than ``expected`` bytes and one piece (no decompression bombs)."""
    out = bytearray(expected)
    filled = 0
    try:
        for piece in inflate_gzip([payload], expected):
            out[filled:filled + len(piece)] = piece
            filled += len(piece)
    except GzipStreamError as exc:
        if exc.kind == "too_long":
            raise NrrdError(f"the NRRD's gzip data holds more than the {expected:,} bytes its "
                            "header declares") from None
        if exc.kind == "truncated":
            raise NrrdError(f"the NRRD's gzip data is truncated ({filled:,} of {expected:,} "
                            "bytes)") from None
        if exc.kind == "trailing":
            raise NrrdError("the NRRD has unexpected bytes after its gzip data") from None
        raise NrrdError(str(exc).replace("the gzip data", "the NRRD's gzip data", 1)) from None
    if filled != expected:
        raise NrrdError(f"the NRRD's gzip data holds {filled:,} bytes but its header declares "
                        f"{expected:,}")
    return out
