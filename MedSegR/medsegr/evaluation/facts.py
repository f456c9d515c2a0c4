"""Checking the facts an answer states against the ground truth of its slice.

Generated answers (:mod:`medsegr.data.conversations`) reason before they segment:
"Right kidney 21.6 cm², left kidney 5.9 cm²: the smaller is the <p>left kidney</p>
[SEG]." This module finds such facts in any answer (the model's or the dataset's)
and measures the truth on the ground-truth masks, so an evaluation can tell a
reasoning answer from one that only sounds right.

Facts found (case-insensitive), and the truth each is compared with:

- ``side``: "the patient's left/right": the centroid column against the midline,
  turned into a patient side through ``patient_left``;
- ``image_side``: "image right", "left of the image": the centroid column against
  the midline;
- a side stated as a negation ("not the patient's left", "not on the image right") is
  the claim that the structure is not there: it holds when the measured side is the
  other one (stated as ``"not left"``);
- ``area``: "14.2 cm²" (also ``cm2``, ``cm^2``): pixels x pixel spacing, in cm²;
- ``size``: "about 9 mm": the equal-area diameter of the largest connected
  component, in mm;
- ``count``: "two lesions", "3 nodules", "a single focus", "one cyst": connected
  components (4-connectivity, as the generator counts them);
- ``density``: "hypodense", "hyperintense", "isoattenuating": ``densities`` (name ->
  word) or, from the slice ``intensities``, the lesion against the host tissue
  around it (:func:`medsegr.data.scenes.lesion_density`).

Each fact is attributed to a structure named in the answer: the nearest name in
the same clause (``, ; : ( )`` separate clauses; a preceding name wins over a
following one), else in the same sentence, else the first ``<p>name</p>``. Names
are the keys of ``masks``, found inside ``<p>…</p>`` or as plain words (longest
first). ``size``, ``count`` and ``density`` belong to lesions (names that
:func:`medsegr.data.knowledge.match_structure` takes for a lesion); when no lesion
is named near them, the lesion lying in a named organ ("a hypodense focus lies
inside the <p>liver</p>") or the only lesion of the slice is used.

Tolerances: areas and sizes within ``tolerance`` (default 15 %) of the truth plus
the rounding of one decimal (0.05 cm², 0.5 mm); sides are not judged within 2 % of
the image width of the midline (either side is accepted there); counts and density
words must be equal (``hypo``/``hyper``/``iso``: "dense" and "intense" are the same).

A fact that cannot be tied to a structure, whose structure has no mask, or whose
truth cannot be measured (a patient side on a sagittal slice, a density without
intensities) is returned with ``ok=False`` and the reason in ``detail``: an answer
should state nothing it cannot ground.

API::

    checks = check_facts(answer, masks, pixel_spacing, patient_left="right")
    # masks: every ground-truth mask of the record's slice, by the name the answers
    #        use (MaskRef.name), 2-D bool arrays in display orientation
    # pixel_spacing: (row, column) mm; patient_left: the image side showing the
    #        patient's left ("right" for axial and coronal views, None if unknown)
    summary = summarise_facts(checks)        # {"facts": n, "correct": k, "by_kind": {...}}

    truth = slice_ground_truth(record)       # the same inputs from a dataset record
    checks = truth.check(answer)

Pass all of the slice's masks, not only those the answer segments: a size answer
compares two structures, and the midline (:func:`~medsegr.data.conversations.midline_column`,
unless ``midline`` is given) is taken from the masks together.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medsegr.data.conversations import midline_column

__all__ = ["FactCheck", "SliceTruth", "StatedFact", "check_facts", "find_facts", "slice_ground_truth",
           "summarise_facts"]

#: claims closer to the midline than this fraction of the width are not judged
MIDLINE_BAND = 0.02
#: the decimals answers round to: 0.1 cm², 1 mm
AREA_ROUNDING = 0.05
SIZE_ROUNDING = 0.5

_NUMBERS = {"one": 1, "a single": 1, "single": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
            "seven": 7, "eight": 8, "nine": 9, "ten": 10}
_LESION_NOUNS = (r"lesions?|foci|focus|nodules?|cysts?|masses|mass|tumou?rs?|metastas[ie]s|spots?|"
                 r"abnormalit(?:y|ies)")
_ADJECTIVES = (r"separate|small|large|distinct|round|focal|solid|cystic|new|"
               r"(?:hypo|hyper|iso)(?:dense|intense|attenuating)")
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("side", re.compile(r"\bpatient(?:'|’)?s\s+(left|right)\b", re.I)),
    ("image_side", re.compile(r"\bimage(?:'s|’s)?\s+(left|right)\b|\b(left|right)\s+(?:side\s+|half\s+)?of\s+"
                              r"the\s+(?:image|picture)\b", re.I)),
    ("area", re.compile(r"(\d+(?:\.\d+)?)\s*(?:cm²|cm\^?2\b|square\s+centimet(?:re|er)s?)", re.I)),
    ("size", re.compile(r"(\d+(?:\.\d+)?)\s*mm\b", re.I)),
    ("count", re.compile(rf"\b(a single|single|one|two|three|four|five|six|seven|eight|nine|ten|\d+)\s+"
                         rf"(?:(?:{_ADJECTIVES})\s+){{0,3}}(?:{_LESION_NOUNS})\b", re.I)),
    ("density", re.compile(r"\b(hypo|hyper|iso)(?:dense|intense|attenuating)\b", re.I)),
)
_LESION_KINDS = ("size", "count", "density")
_TAG_RE = re.compile(r"<p>(.*?)</p>", re.S)
#: the words before a side that turn it into a negation: "not the patient's left",
#: "not on the left of the image", "rather than the image right"
_NEGATED_RE = re.compile(r"\b(?:not|rather\s+than|instead\s+of)\s+(?:(?:on|in|to|at|from)\s+)?(?:the\s+)?$",
                         re.I)
_CLAUSE_RE = re.compile(r"[,;:()]")
_SENTENCE_RE = re.compile(r"[.!?](?=\s|$)")


@dataclass(frozen=True)
class StatedFact:
    """A fact found in an answer: its kind, the matched text and where it is, the
    stated value ("left", 14.2, 3, "hypo") and the structure it was attributed to."""

    kind: str
    text: str
    start: int
    stated: Any
    structure: str | None


@dataclass(frozen=True)
class FactCheck:
    """A stated fact compared with the truth measured on the masks."""

    kind: str
    text: str
    structure: str | None
    stated: Any
    truth: Any
    ok: bool
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "text": self.text, "structure": self.structure, "stated": self.stated,
                "truth": self.truth, "ok": self.ok, "detail": self.detail}


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class _Mention:
    name: str
    start: int
    end: int
    tagged: bool


def _mentions(answer: str, names: Sequence[str]) -> list[_Mention]:
    found: list[_Mention] = []
    taken = np.zeros(len(answer) + 1, dtype=bool)
    known = {n.lower(): n for n in names}
    for tag in _TAG_RE.finditer(answer):
        name = tag.group(1).strip()
        found.append(_Mention(known.get(name.lower(), name), tag.start(), tag.end(), True))
        taken[tag.start():tag.end()] = True
    for name in sorted(names, key=len, reverse=True):
        if not name.strip():
            continue
        for match in re.finditer(rf"(?<![\w-]){re.escape(name)}(?![\w-])", answer, re.I):
            if not taken[match.start():match.end()].any():
                found.append(_Mention(name, match.start(), match.end(), False))
                taken[match.start():match.end()] = True
    return sorted(found, key=lambda m: m.start)


def _is_lesion(name: str) -> bool:
    from medsegr.data.knowledge import match_structure

    try:
        return match_structure(name).kind == "lesion"
    except ValueError:
        return False


def _span(text: str, position: int, pattern: re.Pattern[str]) -> tuple[int, int]:
    """The start and end of the piece of ``text`` (cut at ``pattern``) holding ``position``."""
    start, end = 0, len(text)
    for cut in pattern.finditer(text):
        if cut.end() <= position:
            start = cut.end()
        elif cut.start() >= position:
            end = cut.start()
            break
    return start, end


def _nearest(mentions: list[_Mention], start: int, end: int, lo: int, hi: int) -> _Mention | None:
    before = [m for m in mentions if lo <= m.start and m.end <= start]
    if before:
        return before[-1]
    after = [m for m in mentions if m.start >= end and m.end <= hi]
    return after[0] if after else None


def _without_tags(answer: str) -> str:
    """The answer with each ``<p>…</p>`` blanked out (same length): no fact inside names."""
    return _TAG_RE.sub(lambda m: " " * len(m.group(0)), answer)


def find_facts(answer: str, names: Sequence[str], lesions: Sequence[str] | None = None,
               hosts: Mapping[str, str] | None = None) -> list[StatedFact]:
    """The facts ``answer`` states, each attributed to one of ``names`` (or None).

    ``lesions``: which names are lesions (default: by the knowledge base);
    ``hosts``: lesion name -> the name of the organ holding it (to attribute a
    lesion fact stated next to its organ's name).
    """
    lesions = [n for n in names if _is_lesion(n)] if lesions is None else list(lesions)
    hosts = dict(hosts or {})
    mentions = _mentions(answer, names)
    plain = _without_tags(answer)
    out: list[StatedFact] = []
    for kind, pattern in _PATTERNS:
        for match in pattern.finditer(plain):
            value_text = next((g for g in match.groups() if g), match.group(0))
            stated: Any
            if kind in ("side", "image_side"):
                stated = value_text.lower()
                if _NEGATED_RE.search(plain[max(0, match.start() - 24):match.start()]):
                    stated = f"not {stated}"
            elif kind in ("area", "size"):
                stated = float(value_text)
            elif kind == "count":
                word = value_text.lower()
                stated = int(word) if word.isdigit() else _NUMBERS[word]
            else:
                stated = value_text.lower()
            structure = _attribute(plain, match.start(), match.end(), mentions,
                                   lesions if kind in _LESION_KINDS else None, hosts, names)
            out.append(StatedFact(kind, match.group(0), match.start(), stated, structure))
    return sorted(out, key=lambda f: f.start)


def _attribute(text: str, start: int, end: int, mentions: list[_Mention], lesions: list[str] | None,
               hosts: Mapping[str, str], names: Sequence[str]) -> str | None:
    eligible = mentions if lesions is None else [m for m in mentions if m.name in lesions]
    clause = _span(text, start, _CLAUSE_RE)
    sentence = _span(text, start, _SENTENCE_RE)
    for lo, hi in (clause, sentence):
        found = _nearest(eligible, start, end, lo, hi)
        if found is not None:
            return found.name
    if lesions is not None:  # a lesion fact next to its organ: "a hypodense focus lies inside the liver"
        organ = _nearest([m for m in mentions if m.name not in lesions], start, end, *sentence)
        if organ is not None:
            inside = [les for les in lesions if hosts.get(les) == organ.name]
            if len(inside) == 1:
                return inside[0]
    tagged = [m for m in eligible if m.tagged]
    if tagged:
        return tagged[0].name
    pool = list(names) if lesions is None else lesions
    return pool[0] if len(pool) == 1 else None


# --------------------------------------------------------------------------- truth


def _hosts_of(masks: Mapping[str, np.ndarray], lesions: Sequence[str]) -> dict[str, str]:
    """lesion name -> the smallest non-lesion mask holding at least half of it."""
    out: dict[str, str] = {}
    for lesion in lesions:
        small = masks[lesion]
        size = int(np.count_nonzero(small))
        if size == 0:
            continue
        best = None
        for name, mask in masks.items():
            if name in lesions or name == lesion:
                continue
            if np.count_nonzero(mask & small) >= 0.5 * size:
                area = int(np.count_nonzero(mask))
                if best is None or area < best[0]:
                    best = (area, name)
        if best is not None:
            out[lesion] = best[1]
    return out


def _components(mask: np.ndarray) -> tuple[int, np.ndarray]:
    from scipy.ndimage import label

    labelled, count = label(mask)
    return int(count), np.bincount(labelled.ravel())[1:]


def _truth(fact: StatedFact, masks: Mapping[str, np.ndarray], pixel_spacing: tuple[float, float],
           patient_left: str | None, midline: float, width: int, lesions: Sequence[str],
           hosts: Mapping[str, str], intensities: np.ndarray | None, modality: str,
           densities: Mapping[str, str]) -> tuple[Any, str]:
    """(truth, why it is unknown) for one attributed fact."""
    mask = masks[fact.structure]  # type: ignore[index]
    pixels = int(np.count_nonzero(mask))
    cell = float(pixel_spacing[0]) * float(pixel_spacing[1])
    if fact.kind in ("side", "image_side"):
        if pixels == 0:
            return None, "the mask is empty"
        offset = float(np.nonzero(mask)[1].mean()) - midline
        if abs(offset) < MIDLINE_BAND * width:
            return "midline", ""
        image = "right" if offset > 0 else "left"
        if fact.kind == "image_side":
            return image, ""
        if patient_left not in ("left", "right"):
            return None, "the patient's sides are not known on this view"
        return ("left" if image == patient_left else "right"), ""
    if fact.kind == "area":
        return round(pixels * cell / 100.0, 3), ""
    if fact.kind == "count":
        return _components(mask)[0], ""
    if fact.kind == "size":
        if pixels == 0:
            return None, "the mask is empty"
        sizes = _components(mask)[1] if fact.structure in lesions else np.array([pixels])
        return round(float(2.0 * np.sqrt(sizes.max() * cell / np.pi)), 2), ""
    if fact.kind == "density":
        word = densities.get(fact.structure or "")
        if word is None and intensities is not None and fact.structure in hosts:
            from medsegr.data.scenes import lesion_density

            host = masks[hosts[fact.structure]]
            if np.count_nonzero(host & ~mask) >= 10 and pixels:
                word = lesion_density(intensities, mask, host, modality) or "iso"
        if word is None:
            return None, "the density is not known (no intensities and no stated density)"
        match = re.match(r"(hypo|hyper|iso)", word.lower())
        return (match.group(1) if match else word.lower()), ""
    return None, f"unknown fact kind {fact.kind}"


def check_facts(answer: str, masks: Mapping[str, np.ndarray], pixel_spacing: tuple[float, float] = (1.0, 1.0),
                *, patient_left: str | None = "right", midline: float | None = None,
                intensities: np.ndarray | None = None, modality: str = "CT",
                densities: Mapping[str, str] | None = None, lesions: Sequence[str] | None = None,
                tolerance: float = 0.15) -> list[FactCheck]:
    """Every fact ``answer`` states, checked against ``masks`` (see the module docstring).

    Args:
        answer: the answer text, with or without ``<p>…</p> [SEG]`` markers.
        masks: structure name -> 2-D bool mask of the slice (display orientation); all
            of the slice's ground-truth masks, named as the answers name them.
        pixel_spacing: (row, column) spacing in mm.
        patient_left: the image side that shows the patient's left: ``"right"`` in the
            radiological display of axial and coronal slices, None when unknown
            (patient-side claims then fail).
        midline: the column of the body's midline (default: from the masks).
        intensities: the slice's raw values, to measure lesion densities.
        modality: ``CT`` or ``MR`` (only names the measured density word).
        densities: lesion name -> known density word, used before ``intensities``.
        lesions: which names are lesions (default: by the knowledge base).
        tolerance: relative tolerance of areas and sizes.

    Returns one :class:`FactCheck` per stated fact, in the answer's order.
    """
    masks = {name: np.asarray(mask, dtype=bool) for name, mask in masks.items()}
    names = list(masks)
    lesion_names = [n for n in names if _is_lesion(n)] if lesions is None else list(lesions)
    hosts = _hosts_of(masks, lesion_names)
    width = next((int(m.shape[1]) for m in masks.values() if m.ndim == 2), 1)
    line = midline if midline is not None else midline_column(list(masks.values()), width)
    out: list[FactCheck] = []
    for fact in find_facts(answer, names, lesion_names, hosts):
        if fact.structure is None or fact.structure not in masks:
            reason = ("no structure of the slice is named near it" if fact.structure is None
                      else f"no ground-truth mask named {fact.structure!r}")
            out.append(FactCheck(fact.kind, fact.text, fact.structure, fact.stated, None, False, reason))
            continue
        truth, why = _truth(fact, masks, pixel_spacing, patient_left, line, width, lesion_names, hosts,
                            intensities, modality, dict(densities or {}))
        if truth is None:
            out.append(FactCheck(fact.kind, fact.text, fact.structure, fact.stated, None, False, why))
            continue
        if fact.kind in ("side", "image_side"):
            negated = str(fact.stated).startswith("not ")
            ok = truth == "midline" or (truth != fact.stated[4:] if negated else truth == fact.stated)
            detail = ("near the midline: either side is accepted" if truth == "midline"
                      else f"measured on the {truth}" if negated else "")
        elif fact.kind == "area":
            ok = abs(fact.stated - truth) <= tolerance * truth + AREA_ROUNDING
            detail = f"measured {truth:.2f} cm²"
        elif fact.kind == "size":
            ok = abs(fact.stated - truth) <= tolerance * truth + SIZE_ROUNDING
            detail = f"measured {truth:.1f} mm"
        else:
            ok = fact.stated == truth
            detail = ""
        out.append(FactCheck(fact.kind, fact.text, fact.structure, fact.stated, truth, bool(ok), detail))
    return out


def summarise_facts(checks: Sequence[FactCheck]) -> dict[str, Any]:
    """``{"facts": n, "correct": k, "accuracy": k/n or None, "by_kind": {kind: [n, k]}}``."""
    by_kind: dict[str, list[int]] = {}
    for check in checks:
        row = by_kind.setdefault(check.kind, [0, 0])
        row[0] += 1
        row[1] += int(check.ok)
    total = len(checks)
    correct = sum(int(c.ok) for c in checks)
    return {"facts": total, "correct": correct, "accuracy": correct / total if total else None,
            "by_kind": by_kind}


# --------------------------------------------------------------------------- records


@dataclass
class SliceTruth:
    """The ground truth of one record's slice, ready for :func:`check_facts`."""

    masks: dict[str, np.ndarray]
    pixel_spacing: tuple[float, float]
    patient_left: str | None
    intensities: np.ndarray | None = None
    modality: str = "CT"
    densities: dict[str, str] = field(default_factory=dict)

    def check(self, answer: str, **options: Any) -> list[FactCheck]:
        """:func:`check_facts` of ``answer`` on this slice."""
        return check_facts(answer, self.masks, self.pixel_spacing, patient_left=self.patient_left,
                           intensities=self.intensities, modality=self.modality, densities=self.densities,
                           **options)


def slice_ground_truth(record: Any, cache: Any = None, *, with_intensities: bool = True) -> SliceTruth:
    """The masks (by name; masks sharing a name are joined), pixel spacing, patient
    side and intensities of a loaded dataset record's slice
    (:class:`medsegr.data.records.Record`). A 2-D image counts as axial, as the
    dataset builders treat it."""
    intensities, by_key = record.load_slice(cache)
    view = record.slice_view(cache)
    masks: dict[str, np.ndarray] = {}
    for ref in record.masks:
        mask = by_key[ref.key]
        masks[ref.name] = masks[ref.name] | mask if ref.name in masks else mask
    plane = record.axis or "axial"
    return SliceTruth(masks=masks, pixel_spacing=tuple(float(v) for v in view.pixel_spacing),
                      patient_left="right" if plane in ("axial", "coronal") else None,
                      intensities=np.asarray(intensities, dtype=np.float32) if with_intensities else None,
                      modality=record.modality)
