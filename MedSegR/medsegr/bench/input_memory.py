"""Peak memory of reading hostile and huge inputs, each in a fresh process, bounded.

::

    python -m medsegr.bench.input_memory [--json FILE]

For each case the input file is generated into a temporary folder, then a new Python
process (``sys.executable -c ...``) imports ``medsegr.io.images``,
``medsegr.imaging.intensity`` and numpy, takes its resident set size (``VmRSS``) as the
baseline, reads the file with :func:`medsegr.io.images.load_image` as ``medsegr ask``
does (``stored_type=True``: an 8- or 16-bit image stays in its type) and normalises it
with :func:`medsegr.imaging.intensity.normalise`, as a session does, and reports its peak RSS
(``ru_maxrss``, KiB on Linux) minus the baseline. The cases:

* ``png_16000x16000``: a 16000×16000 8-bit grayscale PNG (a constant value per row, a
  few hundred KB on disk), written by a minimal zlib PNG writer;
* ``nrrd_gzip_zeros_512x512x1024``: a gzip NRRD of 512×512×1024 ``uint8`` zeros
  (about 255 KiB);
* ``nrrd_gzip_empty_members``: a gzip NRRD whose data is 200,000 empty gzip members
  and then half the data of a 16×16×16 volume (the ``gzip_nrrd_empty_members`` bad
  input of the test corpus): refused;
* ``niigz_short_data``: a NIfTI ``.nii.gz`` declaring 512×512×512 ``int16`` (256 MiB)
  that holds 1 MiB of voxel data: refused.

Bound: the peak growth is under twice the float32 size of the decoded volume. What is
held is the image in its stored type (1 byte a voxel for both decoded cases) and its
normalised float32 copy (the normalisation works in place in its result, in chunks of
256 K voxels), 5 bytes a voxel of the 8 allowed, plus what does not grow with the volume
(code pages and buffers of the reader touched on first use: a refused input, which
reaches the same code, peaks at 3–4 MiB). For a refused input, at most 64 MiB. Exit
status 1 when a bound is exceeded or a case does not end as expected (decoded, or
refused).
"""

from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from medsegr.bench.hostile import empty_members_nrrd

KIB = 1024
MIB = 1024 * KIB
#: bound on the peak growth of a refused input
REFUSAL_BOUND = 64 * MIB

_CHILD = """
import json, resource, sys

def rss_kib():
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

import medsegr.io.images, medsegr.imaging.intensity, numpy
baseline = rss_kib()
row = {"baseline_kib": baseline, "voxels": 0, "refused": None}
try:
    image = medsegr.io.images.load_image(sys.argv[1], stored_type=True)
    row["voxels"] = int(image.array.size)
    row["stored_dtype"] = str(image.array.dtype)
    normalised = medsegr.imaging.intensity.normalise(image.array, image.modality)
    row["normalised_dtype"] = str(normalised.dtype)
except Exception as error:  # a refusal is a result here
    row["refused"] = f"{type(error).__name__}: {str(error)[:300]}"
row["peak_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(row))
"""


@dataclass(frozen=True)
class Case:
    """One input: ``make(folder)`` writes it; ``voxels`` it decodes (0: refused)."""

    name: str
    make: Callable[[Path], Path]
    voxels: int

    @property
    def refused(self) -> bool:
        return self.voxels == 0


@dataclass
class Row:
    case: str
    file_bytes: int
    expected: str
    voxels: int
    stored_dtype: str | None
    float32_bytes: int
    peak_growth_bytes: int
    bound_bytes: int
    within_bound: bool
    as_expected: bool
    refused: str | None
    seconds: float


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def write_gradient_png(path: Path, width: int, height: int) -> Path:
    """An 8-bit grayscale PNG, each row one value (a vertical gradient), streamed."""
    squeeze = zlib.compressobj(9)
    parts = []
    for y in range(height):
        value = y * 255 // max(1, height - 1)
        parts.append(squeeze.compress(b"\0" + bytes([value]) * width))
    parts.append(squeeze.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
                     + _png_chunk(b"IDAT", b"".join(parts)) + _png_chunk(b"IEND", b""))
    return path


def write_zeros_nrrd(path: Path, sizes: tuple[int, int, int]) -> Path:
    """A gzip NRRD of ``uint8`` zeros (``sizes`` in NRRD order, x y z), streamed."""
    header = ("NRRD0004\ntype: uint8\ndimension: 3\nsizes: " + " ".join(map(str, sizes))
              + "\nencoding: gzip\nendian: little\nspace: left-posterior-superior\n\n")
    squeeze = zlib.compressobj(9, zlib.DEFLATED, 31)
    total = sizes[0] * sizes[1] * sizes[2]
    chunk = bytes(16 * MIB)
    with path.open("wb") as out:
        out.write(header.encode("ascii"))
        for start in range(0, total, len(chunk)):
            out.write(squeeze.compress(chunk[:min(len(chunk), total - start)]))
        out.write(squeeze.flush())
    return path


def write_short_niigz(path: Path, dims: tuple[int, int, int], data_bytes: int) -> Path:
    """A NIfTI-1 ``.nii.gz`` declaring ``dims`` ``int16`` voxels but holding
    ``data_bytes`` bytes of voxel data (an intact gzip stream)."""
    header = bytearray(352)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, 3, *dims, 1, 1, 1, 1)
    struct.pack_into("<hh", header, 70, 4, 16)  # int16
    struct.pack_into("<8f", header, 76, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    struct.pack_into("<f", header, 108, 352.0)
    struct.pack_into("<f", header, 112, 1.0)
    header[344:348] = b"n+1\0"
    voxels = (bytes(range(1, 201)) * (data_bytes // 200 + 1))[:data_bytes]
    path.write_bytes(_gzip(bytes(header) + voxels))
    return path


def _gzip(data: bytes) -> bytes:
    squeeze = zlib.compressobj(6, zlib.DEFLATED, 31)
    return squeeze.compress(data) + squeeze.flush()


def cases() -> list[Case]:
    return [
        Case("png_16000x16000", lambda d: write_gradient_png(d / "big.png", 16000, 16000),
             16000 * 16000),
        Case("nrrd_gzip_zeros_512x512x1024",
             lambda d: write_zeros_nrrd(d / "zeros.nrrd", (512, 512, 1024)), 512 * 512 * 1024),
        Case("nrrd_gzip_empty_members",
             lambda d: _write(d / "members.nrrd", empty_members_nrrd()), 0),
        Case("niigz_short_data",
             lambda d: write_short_niigz(d / "short.nii.gz", (512, 512, 512), MIB), 0),
    ]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def measure(case: Case, folder: Path) -> Row:
    """Write the case's file into ``folder`` and measure reading it in a new process."""
    path = case.make(folder)
    file_bytes = path.stat().st_size
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True,
                          text=True, timeout=1800)
    seconds = time.monotonic() - started
    path.unlink()
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"{case.name}: the measuring process failed "
                           f"({done.returncode}):\n{done.stderr[-2000:]}")
    child = json.loads(done.stdout.strip().splitlines()[-1])
    growth = max(0, int(child["peak_kib"]) - int(child["baseline_kib"])) * KIB
    voxels = int(child["voxels"])
    refused = child["refused"]
    float32_bytes = 4 * (case.voxels if not case.refused else voxels)
    bound = REFUSAL_BOUND if case.refused else 2 * float32_bytes
    as_expected = (refused is not None) if case.refused else (refused is None
                                                              and voxels == case.voxels)
    return Row(case=case.name, file_bytes=file_bytes, expected=(
        "refused" if case.refused else "decoded"), voxels=voxels,
        stored_dtype=child.get("stored_dtype"), float32_bytes=float32_bytes,
        peak_growth_bytes=growth, bound_bytes=bound, within_bound=growth <= bound,
        as_expected=as_expected, refused=refused, seconds=round(seconds, 2))


def _mib(value: int) -> str:
    return f"{value / MIB:,.1f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="medsegr-input-memory-") as tmp:
        for case in cases():
            folder = Path(tmp) / case.name
            folder.mkdir()
            row = measure(case, folder)
            rows.append(row)
            verdict = "ok" if row.within_bound and row.as_expected else "EXCEEDED" if not \
                row.within_bound else "UNEXPECTED"
            print(f"{row.case:30s} file {row.file_bytes / KIB:9,.1f} KiB  {row.expected:8s} "
                  f"voxels {row.voxels:>12,}  float32 {_mib(row.float32_bytes):>12s}  "
                  f"peak +{_mib(row.peak_growth_bytes):>12s}  bound {_mib(row.bound_bytes):>12s}"
                  f"  {row.seconds:6.1f} s  {verdict}"
                  + (f"\n{'':30s} refused: {row.refused}" if row.refused else ""), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n",
                                   encoding="utf-8")
    return 0 if all(r.within_bound and r.as_expected for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
