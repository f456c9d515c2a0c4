"""What an answer is, everywhere: the engine's API version and media types, the prompt
hints of a question, the turns of a conversation, and the answer with its segments.

The pipeline returns these types, the server serialises them, the client decodes its
replies into them, the output writers and the 3D Slicer module read them. The module
needs only numpy and the standard library (no torch, no SimpleITK), so a remote client
or 3D Slicer's Python can import it.

Conventions: masks are bool numpy ``(z, y, x)`` on the grid of the image asked about;
hints use the in-plane voxel indices of the sliced plane (axial ``(i, j)``, coronal
``(i, k)``, sagittal ``(j, k)``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
import re
from typing import Any

import numpy as np

from medsegr.vocabulary import segment_terminology

__all__ = ["API_VERSION", "MEASURED_CLOSE", "MEASURED_OPEN", "MEASURED_SPAN_RE", "NRRD_MEDIA_TYPE", "Answer", "Hints",
           "Measurement", "Segment", "Turn", "measured_span", "strip_measured_spans"]

#: the HTTP API version (the ``/v1`` prefix); the server serves it, the client checks it
API_VERSION = "1"

#: media type of NRRD bodies (image uploads and mask downloads)
NRRD_MEDIA_TYPE = "application/x-nrrd"


@dataclass(frozen=True)
class Hints:
    """Optional explicit prompts, in voxel coordinates of the slice plane.

    For a slice along numpy axis ``a``, ``(x, y)`` are the two remaining ITK
    indices in order (axial: ``(i, j)``, coronal: ``(i, k)``, sagittal: ``(j, k)``).
    ``box`` is ``(x0, y0, x1, y1)``; ``points`` is a list of ``(x, y, label)``,
    label 1 = inside, 0 = outside. In volume mode they apply to every slice.
    """

    box: tuple[float, float, float, float] | None = None
    points: list[tuple[float, float, int]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.box is None and not self.points


@dataclass
class Turn:
    """One question of a conversation and (once answered) its raw answer text, as the
    language model sees it."""

    question: str
    #: the image shown with this question, or None when it is the one already shown
    image_id: str | None
    answer: str | None = None


#: the engine-inserted span after a ``[SEG]`` opens and closes with these; the language
#: model reads the span (its measurements of the decoded mask) and never writes it
MEASURED_OPEN = " (measured: "
MEASURED_CLOSE = ")"
MEASURED_SPAN_RE = re.compile(re.escape(MEASURED_OPEN) + r"[^()]*" + re.escape(MEASURED_CLOSE))


@dataclass(frozen=True)
class Measurement:
    """What the engine measured on a segment's mask (:mod:`medsegr.imaging.measurements`),
    never what the language model wrote: size, patient side, intensity, pieces, extent."""

    mode: str  # "slice" | "volume"
    voxels: int
    #: area on the slice (slice answers), cm²
    area_cm2: float | None
    #: volume (volume answers), mL
    volume_ml: float | None
    #: "left", "right", "midline", "both", or None without a patient orientation
    side: str | None
    intensity_mean: float | None
    intensity_sd: float | None
    #: "HU" on CT, "" (scanner units) otherwise
    intensity_unit: str
    components: int
    #: bounding box along the patient axes ("right-left", "anterior-posterior",
    #: "inferior-superior"), mm; a slice answer leaves out the axis through the slice
    extent_mm: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Measurement":
        def number(key: str) -> float | None:
            value = data.get(key)
            return None if value is None else float(value)

        return cls(mode=str(data.get("mode", "")), voxels=int(data.get("voxels", 0)),
                   area_cm2=number("area_cm2"), volume_ml=number("volume_ml"),
                   side=None if data.get("side") is None else str(data["side"]),
                   intensity_mean=number("intensity_mean"), intensity_sd=number("intensity_sd"),
                   intensity_unit=str(data.get("intensity_unit", "")),
                   components=int(data.get("components", 0)),
                   extent_mm={str(k): float(v) for k, v in dict(data.get("extent_mm") or {}).items()})

    def describe(self) -> str:
        """One line for people: "12.3 cm², patient's left, 35 ± 12 HU, 1 piece, 41 × 58 mm
        (right-left × anterior-posterior)"."""
        parts = []
        if self.volume_ml is not None:
            parts.append(f"{self.volume_ml:.{1 if self.volume_ml >= 1 else 2}f} mL")
        elif self.area_cm2 is not None:
            parts.append(f"{self.area_cm2:.{1 if self.area_cm2 >= 1 else 2}f} cm²")
        if self.side in ("left", "right"):
            parts.append(f"patient's {self.side}")
        elif self.side == "both":
            parts.append("both sides")
        elif self.side == "midline":
            parts.append("midline")
        if self.intensity_mean is not None:
            unit = f" {self.intensity_unit}" if self.intensity_unit else ""
            parts.append(f"{self.intensity_mean:.0f} ± {self.intensity_sd or 0.0:.0f}{unit}")
        parts.append(f"{self.components} piece{'s' if self.components != 1 else ''}")
        if self.extent_mm:
            sizes = " × ".join(f"{v:.0f}" for v in self.extent_mm.values())
            axes = " × ".join(self.extent_mm)
            parts.append(f"{sizes} mm ({axes})")
        return ", ".join(parts)

    def span_text(self) -> str:
        """The short form the language model reads after a ``[SEG]`` (no axis names, no
        brackets): "12.3 cm², patient's left, 35 ± 12 HU, 1 piece, 41 × 58 mm"; "not
        found" for an empty mask."""
        if self.voxels == 0:
            return "not found"
        return self.describe().split(" mm (", 1)[0] + (" mm" if self.extent_mm else "")


@dataclass
class Segment:
    """One segment of an answer: the structure the answer names, and its mask."""

    name: str  # e.g. "left kidney"
    #: bool ``(z, y, x)`` on the grid of the image asked about
    mask: np.ndarray
    index: int  # order in the answer
    #: the server-side segment id (empty for an answer that did not cross the wire)
    id: str = ""
    #: the coded description (:func:`medsegr.vocabulary.segment_terminology`); None from
    #: an engine that does not send one
    terminology: dict[str, Any] | None = None
    #: what the engine measured on the mask (None from an engine that does not measure)
    measured: Measurement | None = None

    @property
    def coded(self) -> bool:
        """True when the segment's name has a standard code."""
        return bool(self.terminology and self.terminology.get("coded"))

    @property
    def voxels(self) -> int:
        return int(self.mask.sum())


@dataclass
class Answer:
    """The engine's answer to one question."""

    text: str  # clinician-readable answer (no [SEG] markers)
    raw_text: str
    segments: list[Segment]
    mode: str  # "slice" | "volume"
    axis: int
    slice_index: int | None
    key_slices: list[int] = field(default_factory=list)
    fine_tuned: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    #: slices whose embedding was computed for this answer (0: all reused)
    encoded_slices: int = 0
    #: the server's id of the request that answered (empty for a local answer)
    request_id: str = ""
    #: structures the answer named whose presence score was below the threshold on every
    #: slice asked about: the grounding module did not find them, and they have no segment
    not_found: list[str] = field(default_factory=list)
    #: the grounding module's presence probability of each ``[SEG]`` of the answer, in
    #: the order the answer names them (the highest over the slices asked about); empty
    #: from an engine that does not report it
    presence: list[float] = field(default_factory=list)
    #: the words the engine chose from its measurements where the model had written
    #: another (``[generation] measured_words``): (the model's word, the engine's)
    engine_words: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (no mask data)."""
        return {
            "answer": self.text,
            "raw_answer": self.raw_text,
            "mode": self.mode,
            "axis": self.axis,
            "slice_index": self.slice_index,
            "key_slices": self.key_slices,
            "segments": [{"index": s.index, "name": s.name, "voxels": s.voxels,
                          "terminology": segment_terminology(s.name),
                          "measured": s.measured.to_dict() if s.measured else None}
                         for s in self.segments],
            "fine_tuned": self.fine_tuned,
            "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
            "tokens": self.tokens,
            "encoded_slices": self.encoded_slices,
            "not_found": list(self.not_found),
            "presence": list(self.presence),
            "engine_words": [{"model": a, "engine": b} for a, b in self.engine_words],
        }


def measured_span(measurement: Measurement | None) -> str:
    """The engine-inserted span after a ``[SEG]``: ``" (measured: …)"`` with
    :meth:`Measurement.span_text`; ``None`` (no mask) reads "not found"."""
    text = "not found" if measurement is None else measurement.span_text()
    return f"{MEASURED_OPEN}{text}{MEASURED_CLOSE}"


def strip_measured_spans(text: str) -> str:
    """``text`` without its engine-inserted measured spans (the measurements are shown
    apart, per segment)."""
    return MEASURED_SPAN_RE.sub("", text)
