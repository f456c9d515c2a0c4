"""The anatomy vocabulary: one table of the structures answers name, with codes.

``anatomy.json`` (next to this module) lists each structure once: its key, display
name, synonyms, patient side, SNOMED CT category and type codes, an optional type
modifier (laterality), an optional anatomic region (with modifier) and the
recommended display colour (0-255 RGB; Slicer's standard terminology colour where
Slicer's lists have the entry). The data builders, the engine and the Slicer module
all read it. Standard library only: the Slicer module imports it without torch.

:func:`lookup` maps a free-text name ("Left kidneys", "grey_matter", "hepatic
lesion") onto an entry; :func:`segment_terminology` gives the JSON-ready coded
description of a segment and :func:`slicer_terminology_string` the terminology
entry string 3D Slicer stores in a segment's ``TerminologyEntry`` tag.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = [
    "LEFT",
    "REGION_CONTEXT",
    "RIGHT",
    "TERMINOLOGY_CONTEXT",
    "AnatomyEntry",
    "Code",
    "entries",
    "get",
    "lookup",
    "normalise",
    "partner",
    "segment_terminology",
    "slicer_terminology_string",
]

DATA_FILE = Path(__file__).with_name("anatomy.json")
TERMINOLOGY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
REGION_CONTEXT = "Anatomic codes - DICOM master list"


@dataclass(frozen=True)
class Code:
    """A coded concept: coding scheme designator, code value, code meaning."""

    scheme: str
    value: str
    meaning: str

    def to_dict(self) -> dict[str, str]:
        return {"scheme": self.scheme, "value": self.value, "meaning": self.meaning}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Code:
        for field in ("scheme", "value", "meaning"):
            if not isinstance(data.get(field), str) or not data[field]:
                raise ValueError(f"code field {field!r} must be a non-empty string, got {data.get(field)!r}")
        return cls(data["scheme"], data["value"], data["meaning"])

    def triple(self) -> str:
        """``scheme^value^meaning`` as Slicer's terminology strings write a code."""
        return f"{self.scheme}^{self.value}^{self.meaning}"


LEFT = Code("SCT", "7771000", "Left")
RIGHT = Code("SCT", "24028007", "Right")
_SIDE_CODES = {"left": LEFT, "right": RIGHT}


@dataclass(frozen=True)
class AnatomyEntry:
    """One structure of the vocabulary.

    ``lateral`` says whether the type takes a left/right modifier (a kidney does, the
    liver does not); ``side`` is set on sided entries ("left kidney"); ``adjectives``
    name the structure as the site of a finding ("splenic" lesion), and only there.
    """

    key: str
    name: str
    synonyms: tuple[str, ...]
    side: str | None
    category: Code
    type: Code
    type_modifier: Code | None
    region: Code | None
    region_modifier: Code | None
    color: tuple[int, int, int]
    lateral: bool = False
    adjectives: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        """``finding`` for a morphologically altered structure, else ``anatomy``."""
        return "finding" if self.category.value == "49755003" else "anatomy"


def _optional(data: dict[str, Any], field: str) -> Code | None:
    value = data.get(field)
    return None if value is None else Code.from_dict(value)


def _entry(data: dict[str, Any]) -> AnatomyEntry:
    color = data.get("color")
    if not (isinstance(color, list) and len(color) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in color)):
        raise ValueError(f"entry {data.get('key')!r}: color must be [r, g, b] in 0-255, got {color!r}")
    side = data.get("side")
    if side not in (None, "left", "right"):
        raise ValueError(f"entry {data.get('key')!r}: side must be left, right or null, got {side!r}")
    return AnatomyEntry(key=str(data["key"]), name=str(data["name"]), synonyms=tuple(data.get("synonyms", ())),
                        side=side, category=Code.from_dict(data["category"]), type=Code.from_dict(data["type"]),
                        type_modifier=_optional(data, "type_modifier"), region=_optional(data, "region"),
                        region_modifier=_optional(data, "region_modifier"),
                        color=(color[0], color[1], color[2]), lateral=bool(data.get("lateral", False)),
                        adjectives=tuple(data.get("adjectives", ())))


@lru_cache(maxsize=1)
def _table() -> tuple[AnatomyEntry, ...]:
    data = json.loads(DATA_FILE.read_text(encoding="utf-8"))
    table = tuple(_entry(item) for item in data["entries"])
    keys = [e.key for e in table]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{DATA_FILE}: duplicate keys")
    return table


def entries() -> tuple[AnatomyEntry, ...]:
    """Every entry of the vocabulary, in file order."""
    return _table()


@lru_cache(maxsize=1)
def _by_key() -> dict[str, AnatomyEntry]:
    return {e.key: e for e in _table()}


def get(key: str) -> AnatomyEntry:
    """The entry with ``key`` (KeyError when there is none)."""
    return _by_key()[key]


# --------------------------------------------------------------------------- lookup

_SPELLING = {"gray": "grey", "tumour": "tumor", "tumours": "tumors", "oesophagus": "esophagus",
             "oedema": "edema", "haemorrhage": "hemorrhage", "haematoma": "hematoma"}
_SIDE_WORDS = {"left": "left", "l": "left", "lt": "left", "right": "right", "r": "right", "rt": "right"}
_ARTICLES = ("the", "a", "an", "both", "all")
#: words that qualify a name without changing what it is ("deep cerebral cortex",
#: "marked liver lesion", "hypodense lesion"): dropped when the whole name has no entry
_QUALIFIERS = ("deep", "superficial", "marked", "segmented", "whole", "entire", "small", "large", "focal",
               "hypodense", "hyperdense", "hypointense", "hyperintense", "isodense", "enhancing")


def normalise(name: str) -> str:
    """Lower case, separators as spaces, British/American spelling unified, no article:
    ``"The Kidney_Left"`` -> ``"kidney left"``."""
    text = re.sub(r"[^a-z0-9 ]+", " ", name.strip().lower())
    words = [_spelling(w) for w in text.split()]
    while words and words[0] in _ARTICLES:
        words = words[1:]
    return " ".join(words)


def _spelling(word: str) -> str:
    if word in _SPELLING:
        return _SPELLING[word]
    if word.endswith("s") and word[:-1] in _SPELLING:  # "haemorrhages"
        return _SPELLING[word[:-1]] + "s"
    return word


@lru_cache(maxsize=1)
def _index() -> dict[str, AnatomyEntry]:
    index: dict[str, AnatomyEntry] = {}
    for entry in _table():  # names and keys first: they win over other entries' synonyms
        for alias in (entry.name, entry.key):
            index.setdefault(normalise(alias), entry)
    for entry in _table():
        for alias in entry.synonyms:
            index.setdefault(normalise(alias), entry)
    for entry in _table():  # "bony structures" also answers "bony structure"
        for alias in entry.synonyms:
            for form in _singulars(normalise(alias))[1:]:
                index.setdefault(form, entry)
    return index


@lru_cache(maxsize=1)
def _adjectives() -> dict[str, AnatomyEntry]:
    return {normalise(word): entry for entry in _table() for word in entry.adjectives}


def _singulars(text: str) -> list[str]:
    forms = [text]
    if text.endswith("ies"):
        forms.append(text[:-3] + "y")
    if text.endswith("es"):
        forms.append(text[:-2])
    if text.endswith("s") and not text.endswith("ss"):
        forms.append(text[:-1])
    return forms


def _find(text: str) -> AnatomyEntry | None:
    index = _index()
    for form in _singulars(text):
        if form in index:
            return index[form]
    return None


def _sided(base: AnatomyEntry, side: str) -> AnatomyEntry:
    if base.side == side:
        return base
    pair = base.key.split("_", 1)[1] if base.side else base.key
    for key in (f"{side}_{pair}", f"{side}_{pair[:-1]}" if pair.endswith("s") else ""):
        if key in _by_key():
            return _by_key()[key]
    if not base.lateral:
        return base  # the liver has no side: "left liver" is the liver
    return replace(base, key=f"{side}_{base.key}", name=f"{side} {base.name}", side=side,
                   type_modifier=_SIDE_CODES[side], synonyms=())


def partner(name: str) -> AnatomyEntry | None:
    """The same structure on the other side of the body ("left kidney": the right kidney);
    None for a name without an entry, a structure without a side, and a finding."""
    entry = lookup(name)
    if entry is None or entry.side not in ("left", "right") or entry.kind == "finding":
        return None
    other = _sided(entry, "right" if entry.side == "left" else "left")
    return other if other.side != entry.side else None


def _with_side(text: str) -> AnatomyEntry | None:
    found = _find(text)
    if found is not None:
        return found
    words = text.split()
    if len(words) < 2:
        return None
    for edge, rest in ((words[0], words[1:]), (words[-1], words[:-1])):
        if edge in _SIDE_WORDS:
            base = _find(" ".join(rest))
            if base is not None:
                return _sided(base, _SIDE_WORDS[edge])
    return None


def _in_region(text: str) -> AnatomyEntry | None:
    """``<structure> <finding>`` ("hepatic lesion", "lung tumour", "left kidney cysts"):
    the finding's entry with the structure as its anatomic region."""
    words = text.split()
    for cut in range(len(words) - 1, 0, -1):
        finding = _find(" ".join(words[cut:]))
        if finding is None or finding.kind != "finding":
            continue
        for start in range(cut):
            host = _with_side(" ".join(words[start:cut])) or _adjectives().get(" ".join(words[start:cut]))
            if host is not None and host.kind != "finding":
                host_name = f"{host.side} " if host.side else ""
                host_name += host.type.meaning.lower()
                return replace(finding, key=f"{host.key}_{finding.key}", name=f"{host_name} {finding.name}",
                               synonyms=(), side=None, type_modifier=None, region=host.type,
                               region_modifier=host.type_modifier)
    return None


def lookup(name: str) -> AnatomyEntry | None:
    """The entry for a free-text structure name, or None when it has no code.

    Case, separator, article, plural, British/American spelling and side-word
    insensitive, with synonyms; ``<structure> <finding>`` names resolve to the
    finding with the structure as anatomic region."""
    if not isinstance(name, str):
        return None
    text = normalise(name)
    if not text:
        return None
    words = text.split()
    found = _resolve(text)
    while found is None and len(words) > 1 and words[0] in _QUALIFIERS:
        words = words[1:]
        found = _resolve(" ".join(words))
    return found


def _resolve(text: str) -> AnatomyEntry | None:
    found = _with_side(text)
    if found is None or found.kind == "finding":  # "lung nodule": the nodule, in the lung
        return _in_region(text) or found
    return found


# --------------------------------------------------------------------------- output

def segment_terminology(name: str) -> dict[str, Any]:
    """The coded description of a segment named ``name``, ready for JSON.

    Uncoded names keep their free text: ``{"name": ..., "coded": False, ...}`` with
    every code and the colour None."""
    entry = lookup(name)
    if entry is None:
        return {"name": name, "coded": False, "key": None, "standard_name": None, "category": None, "type": None,
                "type_modifier": None, "region": None, "region_modifier": None, "color": None}
    def code(value: Code | None) -> dict[str, str] | None:
        return None if value is None else value.to_dict()
    return {"name": name, "coded": True, "key": entry.key, "standard_name": entry.name,
            "category": code(entry.category), "type": code(entry.type),
            "type_modifier": code(entry.type_modifier), "region": code(entry.region),
            "region_modifier": code(entry.region_modifier), "color": list(entry.color)}


def slicer_terminology_string(entry: AnatomyEntry) -> str:
    """The terminology entry string of a segment's ``TerminologyEntry`` tag, as 3D Slicer
    writes it: ``context~category~type~type modifier~region context~region~region
    modifier``, each code ``scheme^value^meaning`` (``^^`` when absent)."""
    def triple(value: Code | None) -> str:
        return "^^" if value is None else value.triple()
    return "~".join((TERMINOLOGY_CONTEXT, triple(entry.category), triple(entry.type),
                     triple(entry.type_modifier), REGION_CONTEXT, triple(entry.region),
                     triple(entry.region_modifier)))
