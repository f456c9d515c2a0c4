"""Questions and answers about one slice, generated from what is on it.

A :class:`Scene` says what a slice shows: each labelled structure (:class:`Item`,
with its knowledge-base entry, area, position and, for lesions, density, count and
host organ), which structures contain which, where the body's midline is, and what
is known to be absent. From it :func:`make_conversation` builds one conversation of
1-3 turns:

- ``explicit``: "Segment the liver." (names and synonyms);
- ``implicit``: a clue from the knowledge base ("Which organ stores glycogen?"), the
  body system, or reasoning over the scene: patient left/right (radiological
  convention: the patient's left is on the image's right in axial and coronal
  views), the larger/smaller of a pair, the organ holding a lesion, "anything
  abnormal in the liver?", how many lesions;
- ``multi-turn`` follow-ups that depend on the previous turn ("Now only the
  lesion.", "And the organ that contains it?", "Now the other one.");
- ``absent``: structures that cannot be there (a liver in a head scan), organs
  known to be missing, organs without lesions. An absent structure is named as a
  present one would be, with a ``[SEG]`` bound to an empty mask ("absent:<name>"), and
  after the engine's measured span, which then reads "not found", the answer says it
  is not on the slice and why (what the scan covers, "it has been removed"): the
  pixels decide whether it is there, not a guess from the image tokens. Organs
  without lesions are answered without a ``[SEG]`` ("no lesion on this slice").

With ``[model] measured_spans`` the engine writes what it measured on each decoded mask
right after its ``[SEG]`` (:func:`medsegr.answers.measured_span`), and training
conversations carry the same spans, measured on the ground truth, as read-only tokens.
So numbers are never the model's: comparisons segment both structures and conclude
after both spans, with one opener that commits to both ("Measuring both, the <p>left
kidney</p> [SEG] and the <p>right kidney</p> [SEG]: the larger is the right kidney."), a
side is stated after the ``[SEG]`` it belongs to, and lesion answers state no size.

Answers reason before they segment, in one or two short sentences: what identifies
the structure in this modality (the knowledge entry's appearance for CT or the MR
sequence), where it is (the entry's location or the measured side of the midline),
and the rule that decided the question (patient vs. image side, the organ holding the
lesion, the number of lesions). Every stated fact is
measured on the slice's masks (side from the centroid and the midline, lesion count
from the connected components) or comes from the data source (a lesion's density);
:mod:`medsegr.evaluation.facts` checks the same facts in any answer.
Answers stay short (:data:`ANSWER_BUDGET`, about 45 SmolLM2 tokens) because every
token costs training time. Every ``[SEG]`` follows ``<p>name</p>`` and is bound to
its mask key; ``<p>`` is used for nothing else.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medsegr.data.knowledge import Structure, absent_candidates
from medsegr.data.records import SEG_TOKEN, Turn, absent_key

__all__ = ["ANSWER_BUDGET", "HELDOUT_SIZE_Q", "SIDED_PLANES", "Absence", "Item", "Scene", "answer_cost",
           "make_conversation", "make_heldout_conversation", "make_heldout_size_conversation", "measure",
           "midline_column", "seg"]

_NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight",
                 9: "nine", 10: "ten"}
#: planes whose display puts the patient's left on the image right (radiological view)
SIDED_PLANES = ("axial", "coronal")
#: a structure whose centroid is closer to the midline than this fraction of the
#: image width is not said to be on either side
SIDE_MARGIN = 0.05
#: the longest answer, in :func:`answer_cost` units (about 3.3 characters per SmolLM2
#: token: 150 is about 45 tokens); longer phrasings give way to shorter ones
ANSWER_BUDGET = 150


def seg(name: str) -> str:
    """``<p>name</p> [SEG]``: a named mask marker."""
    return f"<p>{name}</p> {SEG_TOKEN}"


def answer_cost(text: str) -> int:
    """A cheap stand-in for an answer's token count (characters; each ``<p>…</p>
    [SEG]`` marker is worth 8 more, its tags tokenise into many pieces)."""
    return len(text) + 8 * text.count("<p>")


@dataclass
class Item:
    """One labelled structure on the slice.

    ``centroid`` is (row, column) in display orientation; ``attrs`` holds known facts
    (lesions: ``density`` e.g. "hypodense", ``size_mm`` = the largest lesion's
    equal-area diameter, ``count`` = connected components, ``host`` = the key of the
    organ containing them).
    """

    key: str
    entry: Structure
    name: str
    area_mm2: float
    centroid: tuple[float, float]
    diameter_mm: float
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def is_lesion(self) -> bool:
        return self.entry.kind == "lesion"


@dataclass
class Absence:
    """A structure known not to be on the slice and why (e.g. "it has been removed")."""

    entry: Structure
    reason: str
    #: the name the answers use for it (the entry's name when None)
    name: str | None = None


@dataclass
class Scene:
    """What one slice shows (see the module docstring).

    ``shape`` is the slice's (rows, columns) and ``midline`` the column of the body's
    midline (:func:`midline_column`); both None when unknown (then a sided
    structure's side is its knowledge entry's).
    """

    modality: str
    plane: str
    regions: tuple[str, ...]
    items: dict[str, Item]
    sequence: str | None = None
    #: key -> keys of the items lying (almost) entirely inside it
    contains: dict[str, list[str]] = field(default_factory=dict)
    absences: list[Absence] = field(default_factory=list)
    #: keys of organs known to hold no lesion on this slice
    lesion_free: list[str] = field(default_factory=list)
    #: "abdominal CT", "brain MR": how answers refer to the image
    description: str = "image"
    shape: tuple[int, int] | None = None
    midline: float | None = None

    def sided_pair(self, key: str) -> Item | None:
        """The opposite-side item of a sided item (left kidney -> right kidney)."""
        item = self.items[key]
        if item.entry.side is None:
            return None
        other = "right" if item.entry.side == "left" else "left"
        for candidate in self.items.values():
            if (candidate.entry.side == other and candidate.entry.pair == item.entry.pair
                    and candidate.entry.pair is not None):
                return candidate
        return None

    def lesions_of(self, key: str) -> list[Item]:
        return [i for i in self.items.values() if i.is_lesion and i.attrs.get("host") == key]

    def container_of(self, key: str) -> Item | None:
        """The smallest non-lesion item containing ``key``."""
        hosts = [self.items[h] for h, inner in self.contains.items() if key in inner and h in self.items]
        hosts = [h for h in hosts if not h.is_lesion]
        return min(hosts, key=lambda i: i.area_mm2) if hosts else None

    def image_side(self, key: str) -> str | None:
        """``left``/``right``: the image half holding the item's centroid, measured
        against the midline; None near the midline or when the midline is unknown."""
        if self.midline is None or self.shape is None:
            return None
        offset = self.items[key].centroid[1] - self.midline
        if abs(offset) < SIDE_MARGIN * self.shape[1]:
            return None
        return "right" if offset > 0 else "left"

    def side_of(self, key: str) -> tuple[str, str] | None:
        """(image side, patient side) of an item in an axial or coronal view: measured
        on the slice when the midline is known, else the knowledge entry's side."""
        if self.plane not in SIDED_PLANES:
            return None
        if self.midline is None or self.shape is None:
            patient = self.items[key].entry.side
            if patient is None:
                return None
            return ("right" if patient == "left" else "left"), patient
        image = self.image_side(key)
        if image is None:
            return None
        return image, ("left" if image == "right" else "right")


def measure(masks: Mapping[str, np.ndarray], pixel_spacing: tuple[float, float]) -> dict[str, tuple[float, tuple[float, float], float]]:
    """Per mask (2-D, display orientation): area in mm², centroid (row, col) and an
    equivalent diameter in mm (of the circle of the same area)."""
    out = {}
    cell = pixel_spacing[0] * pixel_spacing[1]
    for key, mask in masks.items():
        rows, cols = np.nonzero(mask)
        area = float(rows.size) * cell
        centroid = (float(rows.mean()), float(cols.mean())) if rows.size else (0.0, 0.0)
        out[key] = (area, centroid, float(2.0 * np.sqrt(area / np.pi)))
    return out


def midline_column(masks: Mapping[str, np.ndarray] | list[np.ndarray], width: int | None = None) -> float:
    """The column of the body's midline on a 2-D slice: the middle of the columns
    covered by the masks together when they span at least half the width (the body or
    head outline usually does), else the middle of the image."""
    arrays = list(masks.values()) if isinstance(masks, Mapping) else list(masks)
    if width is None:
        width = int(arrays[0].shape[1]) if arrays else 1
    covered = np.zeros(width, dtype=bool)
    for mask in arrays:
        if mask.ndim == 2 and mask.shape[1] == width:
            covered |= mask.any(axis=0)
    columns = np.nonzero(covered)[0]
    if columns.size and columns[-1] - columns[0] + 1 >= 0.5 * width:
        return float(columns[0] + columns[-1]) / 2.0
    return (width - 1) / 2.0


def containment(masks: Mapping[str, np.ndarray], threshold: float = 0.95) -> dict[str, list[str]]:
    """key -> keys of the masks with at least ``threshold`` of their area inside it."""
    out: dict[str, list[str]] = {}
    sizes = {k: int(np.count_nonzero(m)) for k, m in masks.items()}
    for outer, big in masks.items():
        for inner, small in masks.items():
            if inner == outer or sizes[inner] == 0 or sizes[inner] >= sizes[outer]:
                continue
            if np.count_nonzero(big & small) >= threshold * sizes[inner]:
                out.setdefault(outer, []).append(inner)
    return out


# --------------------------------------------------------------------------- phrasing

_EXPLICIT_Q = (
    "Segment the {n}.", "Please segment the {n}.", "Outline the {n}.", "Show me the {n}.",
    "Where is the {n}? Segment it.", "Can you mark the {n} on this slice?", "Delineate the {n}.",
    "Find the {n} and segment it.", "Highlight the {n}.", "Give me a mask of the {n}.",
    "Segment the {n} in this image.", "Mark the {n}, please.",
)
_IMPLICIT_Q = (
    "Which {noun} here {clue}? Segment it.", "Segment the {noun} that {clue}.",
    "Show the {noun} in this image that {clue}.", "Find the {noun} that {clue}.",
    "Which {noun} {clue}? Outline it.", "Highlight the {noun} which {clue}.",
)
#: "a"/"one": other, unlabelled parts of the system may be on the slice too
_SYSTEM_Q = (
    "Segment {a_noun} of the {system} visible in this image.",
    "Show me one {noun} belonging to the {system}.",
    "Find a part of the {system} on this slice and segment it.",
)
_ABSENT_Q = (
    "Segment the {n}.", "Where {be} the {n}? Segment {it}.", "Show me the {n}.",
    "Outline the {n}, please.", "Can you find the {n}?", "Mark the {n} on this slice.",
)


#: a family of wordings kept out of training entirely: only the test split's extra
#: ``-t`` records ask with them (:func:`make_heldout_conversation`), so how answers
#: generalise to new wording is measured (``medsegr eval --templates heldout``)
HELDOUT_EXPLICIT_Q = (
    "I need the {n} delineated on this image.", "Could you produce a mask for the {n}?",
    "Please isolate the {n} for me.", "Trace the boundary of the {n}.",
)
HELDOUT_IMPLICIT_Q = (
    "I am looking for the {noun} that {clue}; please isolate it.",
    "Identify the {noun} that {clue} and trace its boundary.",
    "Somewhere here is the {noun} that {clue}. Could you produce a mask for it?",
)
HELDOUT_ABSENT_Q = (
    "I need the {n} delineated on this image.", "Could you produce a mask for the {n}?",
    "Trace the boundary of the {n}.",
)
HELDOUT_ABSENT_CLUE_Q = "I am looking for the {noun} that {clue}; please isolate it."
#: size questions in the held-out wordings (:func:`make_heldout_size_conversation`), by
#: the size asked for; ``{noun}`` is the pair's noun ("kidney")
HELDOUT_SIZE_Q = {
    "larger": ("Of the two {noun}s, which one is larger on this image? Produce a mask for it.",
               "I need the bigger {noun} delineated on this image.",
               "Please isolate whichever {noun} is larger."),
    "smaller": ("Of the two {noun}s, which one is smaller on this image? Produce a mask for it.",
                "I need the smaller {noun} delineated on this image.",
                "Please isolate whichever {noun} is smaller."),
}
#: the record attribute that marks a held-out-wording record
TEMPLATES_ATTRIBUTE = "templates"


def _it(entry: Structure) -> str:
    return "they" if entry.plural else "it"


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _number(count: int) -> str:
    return _NUMBER_WORDS.get(count, str(count))


def _alias(entry: Structure, rng: random.Random) -> str:
    """The name, or now and then a synonym (not a vague one), for questions."""
    options = [s for s in entry.synonyms if len(s) > 3 and s not in ("patient", "outline", "cortex")]
    if options and rng.random() < 0.3:
        return rng.choice(options)
    return entry.name


def _fit(rng: random.Random, options: list[str], fallback: list[str] | tuple[str, ...] = ()) -> str:
    """One of the phrasings within :data:`ANSWER_BUDGET`; when none fits, one of the
    ``fallback`` phrasings that does, else the shortest of all."""
    for group in (options, fallback):
        short = [o for o in group if o and answer_cost(o) <= ANSWER_BUDGET]
        if short:
            return rng.choice(short)
    return min([o for o in (*options, *fallback) if o], key=answer_cost)


def _sides_hold(scene: Scene, item: Item, text: str) -> bool:
    """Whether every side ``text`` states for ``item`` ("the patient's left", "in the
    left hemithorax" of a sided entry) agrees with the slice: a sided entry must lie
    on its side of the midline, and a "patient's left/right" needs an axial or coronal
    view and must not contradict the centroid (closer than 2 % of the width to the
    midline passes, as the fact check allows)."""
    claims = re.findall(r"patient(?:'|’)?s\s+(left|right)", text, re.I)
    if item.entry.side and re.search(rf"\b{item.entry.side}\b", text) and scene.plane in SIDED_PLANES:
        side = scene.side_of(item.key)
        if side is None or side[1] != item.entry.side:
            return False
    if not claims:
        return True
    if scene.plane not in SIDED_PLANES:
        return False
    if scene.midline is None or scene.shape is None:
        return all(c.lower() == item.entry.side for c in claims) if item.entry.side else False
    offset = item.centroid[1] - scene.midline
    if abs(offset) < 0.02 * scene.shape[1]:
        return True
    measured = "left" if offset > 0 else "right"
    return all(c.lower() == measured for c in claims)


def _looks(entry: Structure, scene: Scene, limit: int = 50) -> str:
    """The entry's appearance on this modality/sequence, cut to its first clause when long."""
    text = entry.looks(scene.modality, scene.sequence)
    if not text:
        return ""
    candidates = [text, *text.split(", ")]
    candidates += [part for c in list(candidates) for part in c.split(" and ")]
    for candidate in candidates:
        if len(candidate) <= limit and len(candidate.split()) >= 2:
            return candidate
    return ""


def _where_side(scene: Scene, item: Item) -> str:
    """"on the patient's left", or "". It follows the [SEG], whose measured span states the
    patient's side; the image side depends on the display and is said only when asked."""
    side = scene.side_of(item.key)
    if side is None:
        return ""
    return f"on the patient's {side[1]}"


def _position(scene: Scene, item: Item) -> str:
    """Where the centroid lies on the image, up or down ("in the upper part of the image")."""
    if scene.shape is None:
        return ""
    # up and down only: the side comes after the [SEG], from its measured span
    row = item.centroid[0] / max(scene.shape[0], 1)
    vertical = "upper" if row < 1 / 3 else "lower" if row > 2 / 3 else ""
    if vertical:
        return f"in the {vertical} part of the image"
    return "in the middle of the image"


def _repeats(first: str, second: str) -> bool:
    """Whether two phrases share two or more longer words ("beside the spine")."""
    words = [{w for w in p.lower().replace(",", " ").split() if len(w) > 3} for p in (first, second)]
    return len(words[0] & words[1]) >= 2


def _about(item: Item, scene: Scene) -> list[str]:
    """Short grounded descriptions of a non-lesion item: appearance, location, side."""
    entry = item.entry
    looks = _looks(entry, scene)
    location = entry.location if _sides_hold(scene, item, entry.location) else ""
    out = []
    if looks and location and not _repeats(looks, location):
        out.append(f"{looks}, {location}")
    if looks:
        out.append(f"{looks} on this {scene.description}")
    if location:
        out.append(location)
    if not out:
        where = _position(scene, item)
        if where:
            out.append(where)
    return out


def _plain_answer(item: Item, scene: Scene, rng: random.Random) -> str:
    """An answer that identifies and locates one structure, then segments it."""
    if item.is_lesion:
        return _lesion_answer(item, scene, rng)
    entry = item.entry
    name = seg(item.name)
    options = []
    for about in _about(item, scene):
        options += [f"{_cap(about)}: the {name}.",
                    f"{_cap(about)}; {'these are' if entry.plural else 'this is'} the {name}."]
    if entry.location and _sides_hold(scene, item, entry.location):
        options.append(f"The {name} {entry.be} {entry.location}.")
    options.append(f"Looking for the {name}.")  # as absent answers open: presence is measured
    side = _where_side(scene, item) if entry.side else ""
    if side:
        # the side follows the [SEG]: the model reads it in the measured span first
        looks = _looks(entry, scene)
        options += [f"{_cap(looks)}: the {name}, {side}." if looks else f"The {name}, {side}.",
                    f"The {name} lies {side}."]
    return _fit(rng, options, [f"Here {entry.be} the {name}.", f"{name}."])


# ---- lesions

def _lesion_noun(lesion: Item, count: int, rng: random.Random | None = None) -> str:
    """"lesion"/"lesions", "nodule(s)", "cyst(s)" or "focus"/"foci"."""
    last = lesion.entry.name.split()[-1] if lesion.entry.name else "lesion"
    base = {"nodule": "nodule", "nodules": "nodule", "cyst": "cyst", "cysts": "cyst"}.get(last)
    if base is None:
        base = "focus" if rng is not None and rng.random() < 0.3 else "lesion"
    if count == 1:
        return base
    return "foci" if base == "focus" else f"{base}s"


def _lesion_phrases(lesion: Item, scene: Scene, rng: random.Random, *, host: bool = True) -> list[str]:
    """"one hypodense lesion in the liver" and shorter variants (count and density as
    measured/known; the host only when ``host``; no size: the engine measures it)."""
    count = max(int(lesion.attrs.get("count", 1) or 1), 1)
    density = lesion.attrs.get("density") or ""
    noun = _lesion_noun(lesion, count, rng)
    number = _number(count) if count > 1 or rng.random() < 0.7 else "a single"
    words = f"{number} {density} {noun}" if density else f"{number} {noun}"
    holder = scene.items.get(lesion.attrs.get("host", "")) if host else None
    where = f" in the {holder.name}" if holder is not None else ""
    out = [f"{words}{where}"]
    if where:
        out.append(words)
    return out


def _lesion_answer(lesion: Item, scene: Scene, rng: random.Random, lead: str = "") -> str:
    name = seg(lesion.name)
    options = []
    for phrase in _lesion_phrases(lesion, scene, rng):
        text = f"{lead}{phrase}" if lead else _cap(phrase)
        options += [f"{text}: the {name}.", f"{text}; segmenting the {name}."]
    return _fit(rng, options)


def _lesion_words(lesion: Item) -> str:
    density = lesion.attrs.get("density")
    return f"{density} lesion" if density else lesion.entry.name


# --------------------------------------------------------------------------- first turns

Generated = tuple[Turn, list[str]]  # the turn and the item keys it is about


def _explicit(scene: Scene, rng: random.Random, questions: tuple[str, ...] = _EXPLICIT_Q,
              ) -> Generated | None:
    items = [i for i in scene.items.values()]
    if not items:
        return None
    item = rng.choice(items)
    question = rng.choice(questions).format(n=_alias(item.entry, rng) if not item.is_lesion else item.name)
    return Turn(question, "explicit", _plain_answer(item, scene, rng), (item.key,)), [item.key]


_PREPOSITIONS = ("in ", "on ", "to ", "around ", "under ", "above ", "below ", "behind ", "beside ", "between ",
                 "inside ", "outside ", "deep ", "at ", "near ")


def _implicit(scene: Scene, rng: random.Random, questions: tuple[str, ...] = _IMPLICIT_Q,
              ) -> Generated | None:
    items = [i for i in scene.items.values() if i.entry.clues and not i.is_lesion]
    if not items:
        return None
    item = rng.choice(items)
    entry = item.entry
    clue = rng.choice(entry.clues)
    # the clue must single out this item among what is on the slice, and be true on it
    if any(clue in other.entry.clues for other in scene.items.values() if other.key != item.key):
        return None
    if not _sides_hold(scene, item, clue):
        return None
    question = rng.choice(questions).format(noun=entry.noun, clue=clue)
    name = seg(item.name)
    fact = f"The {item.name} {clue}"  # the knowledge that answers the question
    options = [f"{fact}; {_it(entry)} {entry.be} {about}: the {name}." if about.startswith(_PREPOSITIONS)
               else f"{fact}; {about}: the {name}." for about in _about(item, scene) if not _repeats(clue, about)]
    others = [c for c in entry.clues if c != clue and _sides_hold(scene, item, c)]
    if others and (not options or rng.random() < 0.3):
        options.append(f"{fact} and {rng.choice(others)}: the {name}.")
    return Turn(question, "implicit", _fit(rng, options, [f"{fact}: the {name}."]), (item.key,),
                "function"), [item.key]


def _system(scene: Scene, rng: random.Random) -> Generated | None:
    by_system: dict[str, list[Item]] = {}
    for item in scene.items.values():
        if item.entry.system and not item.is_lesion and not item.entry.plural:
            by_system.setdefault(item.entry.system, []).append(item)
    unique = [v[0] for v in by_system.values() if len(v) == 1]
    if not unique:
        return None
    item = rng.choice(unique)
    entry = item.entry
    article = "an" if entry.noun[0] in "aeiou" else "a"
    question = rng.choice(_SYSTEM_Q).format(system=entry.system, noun=entry.noun, a_noun=f"{article} {entry.noun}")
    name = seg(item.name)
    options = [f"The {item.name} belongs to the {entry.system}: the {name}."]
    options += [f"Part of the {entry.system}, {about}: the {name}." for about in _about(item, scene)]
    return Turn(question, "implicit", _fit(rng, options), (item.key,), "system"), [item.key]


def _laterality(scene: Scene, rng: random.Random) -> Generated | None:
    if scene.plane not in SIDED_PLANES:
        return None
    # a sided structure whose measured side agrees with its label
    items = [i for i in scene.items.values() if i.entry.side and i.entry.pair
             and (scene.side_of(i.key) or (None, None))[1] == i.entry.side]
    if not items:
        return None
    item = rng.choice(items)
    side = item.entry.side
    image_side = "right" if side == "left" else "left"
    base = item.entry.name.split(" ", 1)[1]
    noun = base
    name = seg(item.name)
    if rng.random() < 0.5:
        question = rng.choice((f"Segment the {noun} on the patient's {side}.",
                               f"Which {noun} is the patient's {side} one? Segment it.",
                               f"Show the {noun} of the patient's {side} side."))
        options = [f"In the radiological view the patient's {side} is on the image {image_side}; "
                   f"the {noun} there is the {name}.",
                   f"The patient's {side} is the image {image_side}, and the {noun} there is the {name}.",
                   f"This {noun} lies on the image {image_side}, the patient's {side}: the {name}."]
    else:
        question = rng.choice((f"Segment the {noun} on the {image_side} side of the image.",
                               f"Which {noun} appears on the image {image_side}? Segment it.",
                               f"Outline the {noun} shown on the {image_side} of the picture."))
        options = [f"The image {image_side} shows the patient's {side} (radiological view): the {name}.",
                   f"On the image {image_side} lies the patient's {side} {noun}: the {name}.",
                   f"Viewed from the feet, the image {image_side} is the patient's {side}; so the {name}."]
    return Turn(question, "implicit", _fit(rng, options), (item.key,), "laterality"), [item.key]


def _size(scene: Scene, rng: random.Random,
          wordings: Mapping[str, tuple[str, ...]] | None = None) -> Generated | None:
    pairs = []
    for item in scene.items.values():
        other = scene.sided_pair(item.key)
        if other is not None and item.entry.side == "left":
            big, small = (item, other) if item.area_mm2 >= other.area_mm2 else (other, item)
            if big.area_mm2 >= 1.1 * small.area_mm2:
                pairs.append((big, small))
    if not pairs:
        return None
    big, small = rng.choice(pairs)
    noun = big.entry.name.split(" ", 1)[1]
    if rng.random() < 0.6:
        question = rng.choice((f"Segment the larger {noun}.", f"Which {noun} is bigger on this slice? "
                               "Segment it.", f"Show me the bigger of the two {noun}s."))
        chosen, other, word = big, small, "larger"
    else:
        question = rng.choice((f"Segment the smaller {noun}.", f"Which {noun} looks smaller here? "
                               "Segment it.", f"Outline the smaller of the two {noun}s."))
        chosen, other, word = small, big, "smaller"
    if wordings is not None:  # the same question in other words (the held-out family)
        question = rng.choice(wordings[word]).format(noun=noun)
    # both are segmented, in a random order, and the comparison follows their measured
    # spans: the areas are the engine's, never the model's
    first, second = (chosen, other) if rng.random() < 0.5 else (other, chosen)
    a, b = seg(first.name), seg(second.name)
    # one opener for every size answer: the answer commits to segmenting both before
    # it can conclude anything
    options = [f"Measuring both, the {a} and the {b}: the {word} is the {chosen.name}.",
               f"Measuring both, the {a} and the {b}; by area the {word} is the {chosen.name}.",
               f"Measuring both, the {a} against the {b}: the {chosen.name} is {word}."]
    return Turn(question, "implicit", _fit(rng, options), (first.key, second.key), "size"), [chosen.key]


def _lesion_host(scene: Scene, rng: random.Random) -> Generated | None:
    lesions = [i for i in scene.items.values() if i.is_lesion and i.attrs.get("host") in scene.items]
    if not lesions:
        return None
    lesion = rng.choice(lesions)
    host = scene.items[lesion.attrs["host"]]
    if len({i.attrs.get("host") for i in scene.items.values() if i.is_lesion
            and _lesion_words(i) == _lesion_words(lesion)}) > 1:
        return None  # the same kind of lesion in two organs: not a unique answer
    words = _lesion_words(lesion)
    noun = host.entry.noun
    question = rng.choice((f"Which {noun} has a {words}? Segment it.",
                           f"Segment the {noun} that contains the {words}.",
                           f"Show me the {noun} with a {words}.",
                           f"Where is the {words}? Segment the {noun} it is in."))
    inside = lesion.key in scene.contains.get(host.key, [])
    several = int(lesion.attrs.get("count", 1) or 1) > 1
    verb = ("lie" if several else "lies") + (" inside" if inside else " in")
    name = seg(host.name)
    options = []
    for phrase in _lesion_phrases(lesion, scene, rng, host=False):
        options += [f"{_cap(phrase)} {verb} the {name}.",
                    f"I see {phrase}; {'they' if several else 'it'} {verb} the {host.name}, so the {name}."]
    return Turn(question, "implicit", _fit(rng, options), (host.key,), "lesion"), [host.key, lesion.key]


def _abnormal(scene: Scene, rng: random.Random) -> Generated | None:
    organs = [i for i in scene.items.values() if scene.lesions_of(i.key) or i.key in scene.lesion_free]
    if not organs:
        return None
    organ = rng.choice(organs)
    question = rng.choice((f"Is there anything abnormal in the {organ.name}? Segment it.",
                           f"Does the {organ.name} show a lesion? If so, segment it.",
                           f"Check the {organ.name} for lesions and segment any you find.",
                           f"Is the {organ.name} normal here? Segment any abnormality."))
    lesions = scene.lesions_of(organ.key)
    if not lesions:
        return Turn(question, "absent", _no_lesion(organ, rng), (), "lesion"), [organ.key]
    lesion = lesions[0]
    answer = _lesion_answer(lesion, scene, rng, lead=rng.choice(("Yes, ", "Yes: ", "Abnormal: ")))
    return Turn(question, "implicit", answer, (lesion.key,), "lesion"), [lesion.key, organ.key]


def _no_lesion(organ: Item, rng: random.Random) -> str:
    return rng.choice((f"No, the {organ.name} shows no lesion on this slice; nothing to segment.",
                       f"There is no lesion in the {organ.name} on this slice, so nothing to segment.",
                       f"The {organ.name} holds no lesion here; nothing to segment."))


def _lesion_explicit(scene: Scene, rng: random.Random) -> Generated | None:
    lesions = [i for i in scene.items.values() if i.is_lesion]
    if not lesions:
        return None
    lesion = rng.choice(lesions)
    words = _lesion_words(lesion)
    host = scene.items.get(lesion.attrs.get("host", ""))
    where = f" in the {host.name}" if host is not None else ""
    question = rng.choice((f"Segment the {words}{where}.", f"Outline the {words}{where}.",
                           f"Show me the {words}{where}."))
    return Turn(question, "explicit", _lesion_answer(lesion, scene, rng), (lesion.key,)), [lesion.key]


def _count(scene: Scene, rng: random.Random) -> Generated | None:
    lesions = [i for i in scene.items.values() if i.is_lesion and i.attrs.get("count")]
    if not lesions:
        return None
    lesion = rng.choice(lesions)
    host = scene.items.get(lesion.attrs.get("host", ""))
    if host is None:
        return None
    count = int(lesion.attrs["count"])
    question = rng.choice((f"How many lesions does the {host.name} show on this slice? Segment them.",
                           f"Count the lesions in the {host.name} on this slice and segment them."))
    noun = _lesion_noun(lesion, count, rng)
    number, name = _number(count), seg(lesion.name)
    if count == 1:
        options = [f"Just one {noun} in the {host.name}: the {name}.",
                   f"I count one {noun} inside the {host.name}: the {name}.",
                   f"Counting separate spots gives one {noun}: the {name}."]
    else:
        options = [f"{_cap(number)} separate {noun} in the {host.name}: the {name}.",
                   f"I count {number} {noun} inside the {host.name}: the {name}.",
                   f"Counting separate spots gives {number} {noun}: the {name}."]
    return Turn(question, "implicit", _fit(rng, options), (lesion.key,), "count"), [lesion.key, host.key]


def _multi(scene: Scene, rng: random.Random) -> Generated | None:
    items = [i for i in scene.items.values() if not i.is_lesion]
    if len(items) < 2:
        return None
    pair = None
    options: list[str] = []
    for item in items:
        other = scene.sided_pair(item.key)
        if other is not None and rng.random() < 0.5:
            pair = (item, other) if item.entry.side == "right" else (other, item)
            base = item.entry.pair or item.entry.name
            question = rng.choice((f"Segment both {base}.", f"Show me the two {base}.",
                                   f"Outline the {base} on both sides."))
            sides = [scene.side_of(p.key) for p in pair]
            if all(sides):
                first, second = (f"the {seg(p.name)} on the patient's {s[1]}" for p, s in zip(pair, sides))
                options += [f"One on each side of the midline: {first} and {second}.",
                            f"Both sides: {first}, {second}."]
            break
    if pair is None:
        first_item, second_item = rng.sample(items, 2)
        pair = (first_item, second_item)
        question = rng.choice((f"Segment the {first_item.name} and the {second_item.name}.",
                               f"Show me the {first_item.name} and the {second_item.name}.",
                               f"Outline both the {first_item.name} and the {second_item.name}."))
        locations = [p.entry.location if _sides_hold(scene, p, p.entry.location) else "" for p in pair]
        if all(locations):
            options.append(f"The {seg(pair[0].name)}, {locations[0]}; the {seg(pair[1].name)}, {locations[1]}.")
    reasoned = [o for o in options if answer_cost(o) <= ANSWER_BUDGET]
    plain = f"The {seg(pair[0].name)} and the {seg(pair[1].name)}."
    answer = rng.choice(reasoned) if reasoned and rng.random() < 0.85 else plain
    return Turn(question, "explicit", answer, (pair[0].key, pair[1].key)), [pair[0].key, pair[1].key]


def _absent(scene: Scene, rng: random.Random, questions: tuple[str, ...] = _ABSENT_Q,
            clue_question: str = "Segment the {noun} that {clue}.") -> Generated | None:
    """A question about a structure that is not on the slice. The answer names it as a
    present one would (what identifies it, where it lies: nothing about this slice) with
    a ``[SEG]`` bound to an empty mask (:func:`~medsegr.data.records.absent_key`); after
    the engine's measured span, which reads "not found", it says so and why. Whether a
    structure is there is the grounding module's to tell from the pixels, not a guess
    from the image tokens written before the mask exists."""
    choices: list[Absence] = list(scene.absences)
    if not choices or rng.random() < 0.4:
        present = {i.entry.key for i in scene.items.values()}
        impossible = absent_candidates(set(scene.regions), exclude=present)
        if impossible:
            entry = rng.choice(impossible)
            places = " or the ".join(entry.regions)
            covers = " and the ".join(scene.regions)
            choices = [Absence(entry, rng.choice((f"this {scene.description} does not cover the {places}",
                                                  f"this {scene.description} covers the {covers}, "
                                                  f"not the {places}")))]
    if not choices:
        return None
    absence = rng.choice(choices)
    entry, reason = absence.entry, absence.reason
    name = absence.name or entry.name
    question = rng.choice(questions).format(n=name, be=entry.be, it="them" if entry.plural else "it")
    if rng.random() < 0.5 and entry.clues:
        question = clue_question.format(noun=entry.noun, clue=rng.choice(entry.clues))
    marker = seg(name)
    looks = _looks(entry, scene)
    leads = [f"{_cap(looks)}: the {marker}"] if looks else []
    if entry.location:
        leads.append(f"The {marker} {entry.be} {entry.location}")
    leads.append(f"Looking for the {marker}")
    ends = [f", not found on this slice: {reason}.", f"; not visible here, {reason}.",
            f": not on this slice ({reason})."]
    options = [lead + end for lead in leads for end in ends]
    return Turn(question, "absent", _fit(rng, options), (absent_key(name),), "absent"), []


# --------------------------------------------------------------------------- follow-ups


def _follow_other_side(scene: Scene, focus: list[str], rng: random.Random) -> Generated | None:
    if len(focus) != 1 or focus[0] not in scene.items:
        return None
    other = scene.sided_pair(focus[0])
    if other is None:
        return None
    question = rng.choice(("Now the other one.", "And the one on the other side?",
                           "Now segment its partner on the opposite side."))
    name = seg(other.name)
    side = scene.side_of(other.key)
    if side is not None:
        options = [f"Its partner across the midline: the {name}, on the patient's {side[1]}.",
                   f"Across the midline: the {name}, the patient's {side[1]}.",
                   f"The {name}, on the patient's {side[1]}."]
    else:
        options = [f"The {name}, its partner across the midline.", f"Its partner: the {name}."]
    return Turn(question, "multi-turn", _fit(rng, options), (other.key,), "laterality"), [other.key]


def _follow_compare(scene: Scene, focus: list[str], rng: random.Random) -> Generated | None:
    """"Is it larger than the other one?" after a sided structure: the partner is segmented,
    and the answer compares its measured span with the one in the history."""
    if len(focus) != 1 or focus[0] not in scene.items:
        return None
    item = scene.items[focus[0]]
    other = scene.sided_pair(item.key)
    if other is None:
        return None
    big, small = (item, other) if item.area_mm2 >= other.area_mm2 else (other, item)
    if big.area_mm2 < 1.1 * small.area_mm2:
        return None
    noun = item.entry.name.split(" ", 1)[1]
    if rng.random() < 0.5:
        question = rng.choice(("Is it larger than the other one?", f"Is it bigger than the other {noun}?",
                               "How does it compare in size with its partner? Segment the partner."))
    else:
        question = rng.choice(("Is it smaller than the other one?", f"Is the other {noun} larger?",
                               "Which of the two is larger? Show me the other one too."))
    verdict = "larger" if item is big else "smaller"
    name = seg(other.name)
    options = [f"Measuring its partner, the {name}: by area the {item.name} is {verdict} than the "
               f"{other.name}.",
               f"Measuring its partner, the {name}: the {item.name} is the {verdict} of the two.",
               f"Measuring its partner, the {name}: the larger is the {big.name}."]
    return Turn(question, "multi-turn", _fit(rng, options), (other.key,), "size"), [other.key]


def _follow_only_lesion(scene: Scene, focus: list[str], rng: random.Random) -> Generated | None:
    lesions = [les for key in focus[:1] for les in scene.lesions_of(key)]
    if not lesions:
        return None
    lesion = lesions[0]
    question = rng.choice(("Now only the lesion.", "Now segment just the lesion.",
                           "Show only the abnormal part.", "And the lesion itself?"))
    return Turn(question, "multi-turn", _lesion_answer(lesion, scene, rng), (lesion.key,), "lesion"), [lesion.key]


def _follow_container(scene: Scene, focus: list[str], rng: random.Random) -> Generated | None:
    if not focus or focus[0] not in scene.items:
        return None
    item = scene.items[focus[0]]
    host = scene.items.get(item.attrs.get("host", "")) if item.is_lesion else scene.container_of(item.key)
    if host is None or host.entry.kind == "region" and item.entry.kind != "lesion":
        return None
    question = rng.choice(("And the organ that contains it?", "Now segment the organ it lies in.",
                           "Which structure contains it? Segment that.")) if host.entry.kind in (
        "organ",) else rng.choice(("And the structure that contains it?", "Now what surrounds it? Segment that."))
    inside = item.key in scene.contains.get(host.key, [])
    verb = "lies inside" if inside else "lies in"
    name = seg(host.name)
    options = [f"The {item.name} {verb} the {name}.", f"Its outline {verb} the {name}.",
               f"The {name} surrounds the {item.name}." if inside else f"The {name} holds the {item.name}."]
    return Turn(question, "multi-turn", _fit(rng, options), (host.key,), "containment"), [host.key]


def _follow_contained(scene: Scene, focus: list[str], rng: random.Random) -> Generated | None:
    if not focus:
        return None
    inner = [scene.items[k] for k in scene.contains.get(focus[0], []) if k in scene.items]
    inner = [i for i in inner if not i.is_lesion]
    if not inner:
        return None
    item = rng.choice(inner)
    outer = scene.items[focus[0]].name
    question = rng.choice((f"Now only the {item.name} inside it.", f"And the {item.name} within it?",
                           f"Now just the {item.name}."))
    name = seg(item.name)
    options = [f"Inside the {outer}, {about}: the {name}." for about in _about(item, scene)[-2:]]
    options.append(f"The {name}, inside the {outer}.")
    return Turn(question, "multi-turn", _fit(rng, options), (item.key,), "containment"), [item.key]


def _follow_lesion_free(scene: Scene, focus: list[str], rng: random.Random) -> Generated | None:
    if len(focus) != 1 or focus[0] not in scene.lesion_free:
        return None
    organ = scene.items[focus[0]]
    question = rng.choice(("Is there a lesion in it?", "Does it contain any lesion? Segment it.",
                           "Anything abnormal in it?"))
    return Turn(question, "absent", _no_lesion(organ, rng), (), "lesion"), [organ.key]


def _follow_next(scene: Scene, focus: list[str], rng: random.Random) -> Generated | None:
    others = [i for i in scene.items.values() if i.key not in focus and not i.is_lesion]
    if not others:
        return None
    item = rng.choice(others)
    question = rng.choice((f"And the {item.name}?", f"Now the {item.name}.", f"What about the {item.name}?"))
    return Turn(question, "multi-turn", _plain_answer(item, scene, rng), (item.key,)), [item.key]


_FIRST: tuple[tuple[Callable[[Scene, random.Random], Generated | None], float], ...] = (
    (_explicit, 2.0), (_implicit, 2.5), (_system, 0.5), (_laterality, 1.5), (_size, 4.0),
    (_lesion_host, 1.5), (_abnormal, 1.2), (_lesion_explicit, 0.8), (_count, 0.5), (_multi, 1.0),
    (_absent, 1.5),
)
_FOLLOW: tuple[tuple[Callable[[Scene, list[str], random.Random], Generated | None], float], ...] = (
    (_follow_other_side, 2.0), (_follow_only_lesion, 2.5), (_follow_container, 1.5),
    (_follow_contained, 1.5), (_follow_lesion_free, 1.0), (_follow_next, 0.7), (_follow_compare, 3.0),
)


def _pick(options: list[tuple[Any, float]], rng: random.Random) -> Any:
    total = sum(w for _, w in options)
    value = rng.random() * total
    for option, weight in options:
        value -= weight
        if value <= 0:
            return option
    return options[-1][0]


def make_conversation(scene: Scene, rng: random.Random, max_turns: int = 3,
                      follow_up: float = 0.45) -> list[Turn]:
    """One conversation about ``scene``: a first question, then with probability
    ``follow_up`` each, up to ``max_turns - 1`` follow-ups that depend on it.

    Returns an empty list when the scene allows no question at all.
    """
    candidates = list(_FIRST)
    first: Generated | None = None
    while candidates and first is None:
        generator = _pick(candidates, rng)
        candidates = [(g, w) for g, w in candidates if g is not generator]
        first = generator(scene, rng)
    if first is None:
        return []
    turns = [first[0]]
    focus = first[1]
    asked = {first[0].question}
    segmented = set(first[0].masks)
    # organs whose lesions were already asked about: no second lesion question on them
    checked = set(focus) if first[0].reasoning in ("lesion", "count") else set()
    while len(turns) < max_turns and rng.random() < follow_up:
        options = list(_FOLLOW)
        step: Generated | None = None
        while options and step is None:
            generator = _pick(options, rng)
            options = [(g, w) for g, w in options if g is not generator]
            step = generator(scene, focus, rng)
            if step is None:
                continue
            turn, about = step
            if (turn.question in asked or segmented & set(turn.masks)
                    or (turn.reasoning == "lesion" and not turn.masks and checked & set(about))):
                step = None
        if step is None:
            break
        turns.append(step[0])
        asked.add(step[0].question)
        segmented |= set(step[0].masks)
        if step[0].reasoning == "lesion":
            checked |= set(step[1])
        focus = step[1] or focus
    return turns


def make_heldout_conversation(scene: Scene, rng: random.Random) -> list[Turn]:
    """One single-turn conversation whose question uses the held-out wordings
    (:data:`HELDOUT_EXPLICIT_Q`, :data:`HELDOUT_IMPLICIT_Q`, :data:`HELDOUT_ABSENT_Q`):
    an explicit, implicit or absent-structure question with the answer the training
    wordings would get. Empty when the scene allows none."""
    kinds: list[tuple[Callable[[], Generated | None], float]] = [
        (lambda: _explicit(scene, rng, HELDOUT_EXPLICIT_Q), 1.0),
        (lambda: _implicit(scene, rng, HELDOUT_IMPLICIT_Q), 1.2),
        (lambda: _absent(scene, rng, HELDOUT_ABSENT_Q, HELDOUT_ABSENT_CLUE_Q), 0.8),
    ]
    while kinds:
        make = _pick(kinds, rng)
        kinds = [(k, w) for k, w in kinds if k is not make]
        made = make()
        if made is not None:
            return [made[0]]
    return []


def make_heldout_size_conversation(scene: Scene, rng: random.Random) -> list[Turn]:
    """One single-turn size question ("Of the two kidneys, which one is larger on this
    image?") in the held-out wordings (:data:`HELDOUT_SIZE_Q`), with the answer the
    training wordings would get; empty when the slice has no sided pair of clearly
    different size."""
    made = _size(scene, rng, HELDOUT_SIZE_Q)
    return [] if made is None else [made[0]]
