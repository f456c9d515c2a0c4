"""DICOM Segmentation (SEG) objects for answers about a DICOM series.

A DICOM SEG is how a result reaches PACS: a BINARY segmentation whose frames point at
the source series' instances, one segment per structure the answer named, each coded
with SNOMED CT (category and type, from :mod:`medsegr.vocabulary`) and identified as
the work of an artificial-intelligence algorithm (MedSegR, its version, the
checkpoint). It is written with highdicom.

Masks are bool ``(z, y, x)`` on the image grid as :func:`medsegr.io.images.load_image`
read the series (slice ``k`` at ``origin + k * spacing_z * direction[:, 2]``). Each
slice is matched to its source instance by ImagePositionPatient, never by file name
or file order, after checking that the instances form one evenly spaced stack of the
same orientation: one series, no missing or duplicate slice, no tilt.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsegr import __version__
from medsegr.errors import InputError
from medsegr.io.images import ImageGeometry, atomic_output, file_extension

__all__ = [
    "ALGORITHM_NAME",
    "FILE_NAME",
    "answer_segments",
    "DicomSegPlan",
    "plan_dicom_seg",
    "write_planned",
    "GENERIC_CATEGORY",
    "GENERIC_TYPE",
    "DicomSeries",
    "SegmentCode",
    "SegmentInput",
    "is_dicom_input",
    "read_series",
    "segment_code",
    "staged_writer",
    "write_dicom_seg",
]

FILE_NAME = "segmentation.dcm"
ALGORITHM_NAME = "MedSegR"
#: (scheme, value, meaning) for a structure the vocabulary does not know: DICOM
#: CID 7150 "Segmentation Property Categories" and CID 7151 "Segmentation Property
#: Types" both hold SCT 91723000 "Anatomical Structure"
GENERIC_CATEGORY = ("SCT", "91723000", "Anatomical Structure")
GENERIC_TYPE = ("SCT", "91723000", "Anatomical Structure")
#: positions may differ this much (mm) from the grid before a slice counts as misplaced
_POSITION_TOLERANCE_MM = 0.01
_ORIENTATION_TOLERANCE = 1e-4
_SERIES_NUMBER = 100


@dataclass(frozen=True)
class SegmentInput:
    """One segment to export: its name as the answer gave it, its bool ``(z, y, x)`` mask
    and display colour (RGB 0-255)."""

    name: str
    mask: np.ndarray
    color: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class SegmentCode:
    """The coded meaning of a segment; ``coded`` is False for the generic fallback."""

    category: tuple[str, str, str]
    type: tuple[str, str, str]
    type_modifier: tuple[str, str, str] | None
    coded: bool
    color: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class DicomSeries:
    """The source instances of a series, in image slice order (index ``k``)."""

    path: Path
    datasets: list  # list[pydicom.Dataset] read without pixel data, one per slice k
    files: list[Path]

    @property
    def series_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)

    @property
    def instance_uids(self) -> list[str]:
        return [str(ds.SOPInstanceUID) for ds in self.datasets]


# --------------------------------------------------------------------------- input


def _has_dicom_preamble(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            header = handle.read(132)
    except OSError:
        return False
    return len(header) == 132 and header[128:] == b"DICM"


def is_dicom_input(path: str | os.PathLike[str]) -> bool:
    """True for a DICOM series folder, a ``.dcm`` file or a file with the DICOM preamble."""
    source = Path(path)
    if source.is_dir():
        return any(p.is_file() and _has_dicom_preamble(p) for p in source.iterdir())
    return source.is_file() and (file_extension(source) == ".dcm" or _has_dicom_preamble(source))


def input_format_name(path: str | os.PathLike[str]) -> str:
    """A short format name for messages ("NRRD", "NIfTI", "PNG", ...)."""
    names = {".nrrd": "NRRD", ".nhdr": "NRRD", ".nii": "NIfTI", ".nii.gz": "NIfTI", ".mha": "MetaImage",
             ".mhd": "MetaImage", ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP",
             ".tif": "TIFF", ".tiff": "TIFF"}
    source = Path(path)
    if source.is_dir():
        return "a folder without DICOM files"
    return names.get(file_extension(source), file_extension(source) or "not DICOM")


def _dicom_files(source: Path | Sequence[str | os.PathLike[str]]) -> list[Path]:
    if not isinstance(source, Path):
        files = [Path(p) for p in source]
        if not files:
            raise InputError("no DICOM files were given")
        missing = [str(p) for p in files if not p.is_file()]
        if missing:
            raise InputError(f"{len(missing)} of the series' {len(files)} DICOM files are missing "
                             f"(e.g. {missing[0]})")
        return files
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.is_file() and _has_dicom_preamble(p))
        if not files:
            raise InputError(f"folder contains no DICOM files: {source}")
        return files
    return [source]


def read_series(path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                geometry: ImageGeometry) -> DicomSeries:
    """The source instances of ``path`` (a series folder, one file, or a list of the
    series' files), ordered as the slices of ``geometry`` (the grid the image was read on).

    Raises :class:`InputError` when the files are not one series of single-frame
    images that fills the grid slice by slice: several series, a missing or duplicate
    slice (gap), instances of another orientation or size.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    source: Path | Sequence[str | os.PathLike[str]] = \
        Path(path) if isinstance(path, (str, os.PathLike)) else list(path)
    datasets = []
    files = _dicom_files(source)
    for file in files:
        try:
            datasets.append(pydicom.dcmread(file, stop_before_pixels=True))
        except (InvalidDicomError, OSError, ValueError, EOFError) as error:
            raise InputError(f"could not read DICOM file {file}: {error}") from None
    series = sorted({str(ds.get("SeriesInstanceUID", "")) for ds in datasets})
    if len(series) > 1:
        where = source if isinstance(source, Path) else "the files"
        raise InputError(f"mixed DICOM series in {where}: {len(series)} series ({', '.join(series)}); "
                         "DICOM SEG needs the files of one series")
    for file, ds in zip(files, datasets, strict=True):
        for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
                        "ImagePositionPatient", "ImageOrientationPatient", "Rows", "Columns"):
            if keyword not in ds:
                raise InputError(f"DICOM file {file} has no {keyword}; DICOM SEG cannot reference it")
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise InputError(f"DICOM file {file} is a multi-frame image; DICOM SEG export supports "
                             "series of single-frame images")
    studies = {str(ds.StudyInstanceUID) for ds in datasets}
    if len(studies) > 1:
        raise InputError(f"the files of series {series[0]} belong to {len(studies)} studies")
    order = _slice_order(files, datasets, geometry)
    folder = source if isinstance(source, Path) else files[0].parent
    return DicomSeries(folder, [datasets[i] for i in order], [files[i] for i in order])


def _slice_order(files: Sequence[Path], datasets: Sequence, geometry: ImageGeometry) -> list[int]:
    """Index into ``datasets`` of the instance at each slice ``k`` of ``geometry``."""
    direction = np.reshape(geometry.direction, (3, 3))
    row, column, normal = direction[:, 0], direction[:, 1], direction[:, 2]
    depth, height, width = geometry.shape
    for file, ds in zip(files, datasets, strict=True):
        orientation = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        if not (np.allclose(orientation[:3], row, atol=_ORIENTATION_TOLERANCE)
                and np.allclose(orientation[3:], column, atol=_ORIENTATION_TOLERANCE)):
            raise InputError(f"DICOM file {file} has another orientation "
                             f"({', '.join(f'{v:g}' for v in orientation)}) than the series "
                             "stack; DICOM SEG needs one orientation")
        if (int(ds.Rows), int(ds.Columns)) != (height, width):
            raise InputError(f"DICOM file {file} is {ds.Rows}x{ds.Columns} pixels, the image "
                             f"{height}x{width}")
    if len(datasets) != depth:
        raise InputError(f"the image has {depth} slices but {len(datasets)} DICOM files were found")
    origin = np.asarray(geometry.origin)
    step = float(geometry.spacing[2])
    positions = [np.asarray([float(v) for v in ds.ImagePositionPatient]) for ds in datasets]
    heights = sorted(float(np.dot(p - origin, normal)) for p in positions)
    if depth > 1:
        gaps = np.diff(heights)
        if float(gaps.min()) < _POSITION_TOLERANCE_MM:
            raise InputError("two DICOM files of the series share a slice position (duplicate instances)")
        if float(gaps.max() - gaps.min()) > max(_POSITION_TOLERANCE_MM, 0.01 * float(gaps.min())):
            raise InputError(f"the series' slices are unevenly spaced ({gaps.min():g} to {gaps.max():g} mm "
                             "apart): an instance is missing (a gap); DICOM SEG needs the whole series")
    order: list[int | None] = [None] * depth
    for index, (file, position) in enumerate(zip(files, positions, strict=True)):
        offset = position - origin
        k = int(round(float(np.dot(offset, normal)) / step))
        expected = origin + k * step * normal
        if not 0 <= k < depth or np.linalg.norm(position - expected) > max(_POSITION_TOLERANCE_MM, 0.05 * step):
            raise InputError(f"DICOM file {file} lies off the image's slice grid "
                             f"(ImagePositionPatient {', '.join(f'{v:g}' for v in position)})")
        if order[k] is not None:
            raise InputError(f"two DICOM files of the series are at slice {k}")
        order[k] = index
    return [int(i) for i in order if i is not None]


# --------------------------------------------------------------------------- codes


def segment_code(name: str) -> SegmentCode:
    """The SNOMED CT category and type of ``name`` from :mod:`medsegr.vocabulary`; the
    generic "Anatomical Structure" when the vocabulary does not know the name."""
    from medsegr import vocabulary

    entry = vocabulary.lookup(name)
    if entry is None:
        return SegmentCode(GENERIC_CATEGORY, GENERIC_TYPE, None, coded=False)

    def triple(code) -> tuple[str, str, str]:
        return (str(code.scheme), str(code.value), str(code.meaning))

    modifier = getattr(entry, "type_modifier", None)
    color = getattr(entry, "color", None)
    return SegmentCode(triple(entry.category), triple(entry.type),
                       triple(modifier) if modifier is not None else None, coded=True,
                       color=tuple(int(c) for c in color) if color else None)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- writing


def write_dicom_seg(path: str | os.PathLike[str], series: DicomSeries, segments: Sequence[SegmentInput],
                    *, checkpoint: str | None = None, fine_tuned: bool = True,
                    series_description: str | None = None) -> list[str]:
    """Write a BINARY DICOM SEG of ``segments`` on ``series`` to ``path`` (atomically).

    Only non-empty frames are stored. Returns the names of the segments that had no
    vocabulary entry and were coded as a generic anatomical structure.

    Raises :class:`InputError` when there is no segment or a mask does not match the
    series' grid.
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    if not segments:
        raise InputError("the answer has no segment: there is nothing to write as DICOM SEG")
    first = series.datasets[0]
    shape = (len(series.datasets), int(first.Rows), int(first.Columns))
    for segment in segments:
        if tuple(np.shape(segment.mask)) != shape:
            raise InputError(f"the mask of {segment.name!r} has shape {tuple(np.shape(segment.mask))}, "
                             f"the DICOM series {shape}")
    labels = np.stack([np.asarray(s.mask, dtype=bool) for s in segments], axis=-1)
    if not labels.any():
        raise InputError("every segment of the answer is empty: there is nothing to write as DICOM SEG")
    parameters = {"checkpoint": checkpoint or "none (untrained base parts)",
                  "fine_tuned": "yes" if fine_tuned else "no"}
    algorithm = hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME, family=codes.cid7162.ArtificialIntelligence, version=__version__,
        parameters=parameters)
    uncoded: list[str] = []
    descriptions = []
    for number, segment in enumerate(segments, start=1):
        label = " ".join(str(segment.name).split())[:64] or f"Segment {number}"
        code = segment_code(label)
        if not code.coded:
            uncoded.append(label)
        rgb = segment.color or code.color
        color = hd.color.CIELabColor.from_rgb(*rgb) if rgb else None
        description = hd.seg.SegmentDescription(
            segment_number=number, segment_label=label,
            segmented_property_category=hd.sr.CodedConcept(code.category[1], code.category[0],
                                                            code.category[2]),
            segmented_property_type=hd.sr.CodedConcept(code.type[1], code.type[0], code.type[2]),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm, display_color=color)
        if code.type_modifier is not None:
            modifier = hd.sr.CodedConcept(code.type_modifier[1], code.type_modifier[0], code.type_modifier[2])
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [modifier]
        descriptions.append(description)
    full = [pydicom.dcmread(file) for file in series.files]
    described = checkpoint.rsplit("/", 1)[-1] if checkpoint else "base parts"
    seg = hd.seg.Segmentation(
        source_images=full, pixel_array=labels.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=_SERIES_NUMBER, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer=ALGORITHM_NAME, manufacturer_model_name=ALGORITHM_NAME,
        software_versions=__version__, device_serial_number="none",
        content_description=f"MedSegR {__version__}, {described}"[:64],
        content_label="MEDSEGR", omit_empty_frames=True)
    seg.SeriesDescription = (series_description or f"MedSegR segmentation ({described})")[:64]
    target = Path(path)
    with atomic_output(target) as temporary:
        seg.save_as(temporary)
    return uncoded


# --------------------------------------------------------------------------- result files


@dataclass
class DicomSegPlan:
    """Whether ``medsegr ask`` writes a DICOM SEG, decided before the question is asked.

    ``series`` is the checked source series when it will be written; otherwise
    ``reason`` says why not. After writing, ``written`` and ``uncoded`` tell what happened.
    """

    series: DicomSeries | None
    reason: str | None = None
    written: Path | None = None
    uncoded: list[str] | None = None
    declined: bool = False  # --no-dicom-seg: nothing to warn about

    def record(self) -> dict:
        """What the JSON record says about the DICOM SEG."""
        if self.written is not None:
            return {"file": self.written.name, "series": self.series.series_uid if self.series else None,
                    "uncoded_segments": list(self.uncoded or [])}
        return {"file": None, "reason": self.reason}

    def messages(self) -> list[str]:
        """Warning lines for the console (none when all went as asked)."""
        if self.written is None:
            return [f"no DICOM SEG: {self.reason}"] if self.reason and not self.declined else []
        return [f"segment {name!r} is not in the anatomy vocabulary; the DICOM SEG codes it as a "
                f"generic {GENERIC_TYPE[2]} (SCT {GENERIC_TYPE[1]}) with its name as the label"
                for name in self.uncoded or []]


def plan_dicom_seg(path: str | os.PathLike[str], geometry: ImageGeometry, requested: bool | None) -> DicomSegPlan:
    """Decide on a DICOM SEG for the image at ``path``, read on ``geometry``.

    ``requested``: True (``--dicom-seg``): the input must be a usable DICOM series, else
    :class:`InputError`; False: never; None (default): for DICOM inputs, with the
    reason recorded when the series cannot be referenced.
    """
    if requested is False:
        return DicomSegPlan(None, "not requested (--no-dicom-seg)", declined=True)
    if not is_dicom_input(path):
        reason = f"DICOM SEG needs a DICOM series input; {path} is {input_format_name(path)}"
        if requested:
            raise InputError(reason)
        return DicomSegPlan(None, reason)
    try:
        return DicomSegPlan(read_series(path, geometry))
    except InputError as error:
        if requested:
            raise InputError(f"cannot write a DICOM SEG: {error}") from None
        return DicomSegPlan(None, str(error))


def write_planned(folder: Path, plan: DicomSegPlan | None, segments: Sequence[SegmentInput],
                  info: dict) -> Path | None:
    """Write ``segmentation.dcm`` into ``folder`` when ``plan`` has a series and the
    answer has a non-empty segment; records the outcome on ``plan``."""
    if plan is None or plan.series is None:
        return None
    if not any(np.any(s.mask) for s in segments):
        plan.reason = "the answer has no non-empty segment"
        return None
    checkpoint = info.get("checkpoint")
    plan.uncoded = write_dicom_seg(folder / FILE_NAME, plan.series, segments,
                                   checkpoint=str(checkpoint) if checkpoint else None,
                                   fine_tuned=bool(info.get("fine_tuned", True)))
    plan.written = folder / FILE_NAME
    return plan.written


def staged_writer(plan: DicomSegPlan | None, segments: Sequence[SegmentInput], info: dict,
                  record_name: str = "answer.json"):
    """A writer for :func:`medsegr.cli.outputs.write_results` (its ``extra``): writes
    ``segmentation.dcm`` into the staging folder when planned and adds the outcome
    (file, or why there is none; uncoded segments) to the JSON record there."""

    def write(stage: Path) -> dict[str, str]:
        written = write_planned(stage, plan, segments, info)
        record_path = stage / record_name
        if plan is not None and record_path.is_file():
            import json

            record = json.loads(record_path.read_text(encoding="utf-8"))
            record["dicom_seg"] = plan.record()
            if written is not None:
                record["files"] = {**record.get("files", {}), "dicom_seg": FILE_NAME}
            record_path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        return {"dicom_seg": FILE_NAME} if written is not None else {}

    return write


def answer_segments(answer) -> list[SegmentInput]:
    """The segments of an answer (:class:`medsegr.answers.Answer`, local or remote), in order."""
    return [SegmentInput(str(s.name), np.asarray(s.mask, dtype=bool)) for s in answer.segments]
