"""Standard names, codes and colours for the structures an answer names.

3D Slicer describes what a segment shows with a *terminology entry*: category, type
and optional modifier, each a coded concept (SNOMED CT here), in the "3D Slicer
General Anatomy list" context, with an optional anatomic region. A segment that
carries the entry shows its standard meaning in the Segment Editor and exports
correctly to DICOM SEG. The names, codes and recommended colours come from the
anatomy vocabulary the engine uses too (``medsegr/vocabulary/anatomy.json``);
:func:`lookup` maps a free-text structure name from an answer ("Left kidneys",
"grey matter", "hepatic lesion") onto it. Names that match nothing keep their text,
get no entry, and a distinct colour.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from medsegr import vocabulary

CONTEXT = vocabulary.TERMINOLOGY_CONTEXT
ANATOMIC_CONTEXT = vocabulary.REGION_CONTEXT
LATERALITY = {"left": (vocabulary.LEFT.value, vocabulary.LEFT.meaning),
              "right": (vocabulary.RIGHT.value, vocabulary.RIGHT.meaning)}
_ARTICLES = re.compile(r"^(the|a|an|both|all)\s+")
_WORD_CHARS = re.compile(r"[^a-z0-9 ]+")

#: distinct colours for names that match no terminology entry (0-255 RGB)
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (128, 0, 0), (170, 255, 195),
)


@dataclass(frozen=True)
class TerminologyMatch:
    """A structure name resolved to a terminology entry."""

    entry: str  # the segment's terminology string (Slicer's ``~``/``^`` format)
    meaning: str  # e.g. "Kidney"
    code: str  # SNOMED CT code of the type
    laterality: str | None  # "Left" / "Right" / None
    color: tuple[float, float, float]  # recommended display colour, 0-1
    anatomy: vocabulary.AnatomyEntry | None = None  # the vocabulary entry

    @property
    def standard_name(self) -> str:
        if self.anatomy is not None and self.anatomy.region is not None:
            return self.anatomy.name.capitalize()
        base = self.meaning if self.meaning[:1].isupper() else self.meaning.capitalize()
        return f"{self.laterality} {base.lower()}" if self.laterality else base


def normalise(name: str) -> str:
    """Lower case, plain words, no article."""
    text = _WORD_CHARS.sub(" ", name.lower().replace("-", " ")).strip()
    text = re.sub(r"\s+", " ", text)
    return _ARTICLES.sub("", text).strip()


def lookup(name: str) -> TerminologyMatch | None:
    """The terminology entry for a structure name, or None when it has no standard code."""
    entry = vocabulary.lookup(name)
    if entry is None:
        return None
    laterality = entry.type_modifier.meaning if entry.type_modifier is not None else None
    return TerminologyMatch(entry=vocabulary.slicer_terminology_string(entry), meaning=entry.type.meaning,
                            code=entry.type.value, laterality=laterality,
                            color=tuple(c / 255.0 for c in entry.color),  # type: ignore[arg-type]
                            anatomy=entry)


def palette_color(used: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    """The first palette colour not already used (0-1 RGB), cycling when all are."""
    used_255 = {tuple(round(c * 255) for c in color) for color in used}
    for rgb in PALETTE:
        if rgb not in used_255:
            return tuple(c / 255.0 for c in rgb)  # type: ignore[return-value]
    rgb = PALETTE[len(used) % len(PALETTE)]
    return tuple(c / 255.0 for c in rgb)  # type: ignore[return-value]
