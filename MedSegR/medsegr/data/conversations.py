"""Questions and answers about one slice, generated from what is on it.

A :class:`Scene` says what a slice shows: each labelled structure (:class:`Item`,
with its knowledge-base entry, area, position and, for lesions, density and host
organ), which structures contain which, and what is known to be absent. From it
:func:`make_conversation` builds one conversation of 1-3 turns:

- ``explicit``: "Segment the liver." (names and synonyms);
- ``implicit``: a clue from the knowledge base ("Which organ stores glycogen?"), the
  body system, or reasoning over the scene: patient left/right (radiological
  convention: the patient's left is on the image's right in axial and coronal
  views), the larger/smaller of a pair, the organ holding a lesion, "anything
  abnormal in the liver?";
- ``multi-turn`` follow-ups that depend on the previous turn ("Now only the
  lesion.", "And the organ that contains it?", "Now the other one.");
- ``absent``: structures that cannot be there (a liver in a head scan), organs
  known to be missing, organs without lesions. These answers have no ``[SEG]``.

Answers are short (a name, ``[SEG]`` and one reason) because the model is small.
Every ``[SEG]`` follows ``<p>name</p>`` and is bound to its mask key.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medsegr.data.knowledge import Structure, absent_candidates
from medsegr.data.records import SEG_TOKEN, Turn

__all__ = ["Absence", "Item", "Scene", "make_conversation", "measure", "seg"]

_NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}


def seg(name: str) -> str:
    """``<p>name</p> [SEG]``: a named mask marker."""
    return f"<p>{name}</p> {SEG_TOKEN}"


@dataclass
class Item:
    """One labelled structure on the slice.

    ``centroid`` is (row, column) in display orientation; ``attrs`` holds known facts
    (lesions: ``density`` e.g. "hypodense", ``size_mm``, ``count``, ``host`` = the
    key of the organ containing them).
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


@dataclass
class Scene:
    """What one slice shows (see the module docstring)."""

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


def _that(entry: Structure) -> str:
    return "Those are" if entry.plural else "That is"


def _it(entry: Structure) -> str:
    return "they" if entry.plural else "it"


def _cm2(area_mm2: float) -> str:
    return f"{area_mm2 / 100.0:.1f} cm²"


def _alias(entry: Structure, rng: random.Random) -> str:
    """The name, or now and then a synonym (not a vague one), for questions."""
    options = [s for s in entry.synonyms if len(s) > 3 and s not in ("patient", "outline", "cortex")]
    if options and rng.random() < 0.3:
        return rng.choice(options)
    return entry.name


def _explicit_answer(item: Item, scene: Scene, rng: random.Random) -> str:
    entry = item.entry
    looks = entry.looks(scene.modality, scene.sequence)
    options = [f"Here {entry.be} the {seg(item.name)}.", f"{seg(item.name)}."]
    if entry.location:
        options.append(f"The {seg(item.name)} {entry.be} {entry.location}.")
    if looks:
        options.append(f"The {seg(item.name)}: {looks}.")
    return rng.choice(options)


# --------------------------------------------------------------------------- first turns

Generated = tuple[Turn, list[str]]  # the turn and the item keys it is about


def _explicit(scene: Scene, rng: random.Random) -> Generated | None:
    items = [i for i in scene.items.values()]
    if not items:
        return None
    item = rng.choice(items)
    question = rng.choice(_EXPLICIT_Q).format(n=_alias(item.entry, rng) if not item.is_lesion else item.name)
    return Turn(question, "explicit", _explicit_answer(item, scene, rng), (item.key,)), [item.key]


def _implicit(scene: Scene, rng: random.Random) -> Generated | None:
    items = [i for i in scene.items.values() if i.entry.clues and not i.is_lesion]
    if not items:
        return None
    item = rng.choice(items)
    entry = item.entry
    clue = rng.choice(entry.clues)
    # the clue must single out this item among what is on the slice
    if any(clue in other.entry.clues for other in scene.items.values() if other.key != item.key):
        return None
    question = rng.choice(_IMPLICIT_Q).format(noun=entry.noun, clue=clue)
    reasons = [f"{_that(entry)} the {seg(item.name)}, {entry.location}." if entry.location else
               f"{_that(entry)} the {seg(item.name)}."]
    looks = entry.looks(scene.modality, scene.sequence)
    if looks:
        reasons.append(f"The {seg(item.name)}; on this {scene.description} {_it(entry)} "
                       f"{'show' if entry.plural else 'shows'} as {looks}.")
    others = [c for c in entry.clues if c != clue]
    if others:
        reasons.append(f"The {seg(item.name)}, which {rng.choice(others)}.")
    return Turn(question, "implicit", rng.choice(reasons), (item.key,), "function"), [item.key]


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
    answer = f"The {seg(item.name)} belongs to the {entry.system}."
    return Turn(question, "implicit", answer, (item.key,), "system"), [item.key]


def _laterality(scene: Scene, rng: random.Random) -> Generated | None:
    if scene.plane not in ("axial", "coronal"):
        return None
    items = [i for i in scene.items.values() if i.entry.side and i.entry.pair]
    if not items:
        return None
    item = rng.choice(items)
    side = item.entry.side
    image_side = "right" if side == "left" else "left"
    base = item.entry.name.split(" ", 1)[1]
    noun = base
    if rng.random() < 0.5:
        question = rng.choice((f"Segment the {noun} on the patient's {side}.",
                               f"Which {noun} is the patient's {side} one? Segment it.",
                               f"Show the {noun} of the patient's {side} side."))
        answer = f"The {seg(item.name)}; the patient's {side} is on the image {image_side}."
    else:
        question = rng.choice((f"Segment the {noun} on the {image_side} side of the image.",
                               f"Which {noun} appears on the image {image_side}? Segment it.",
                               f"Outline the {noun} shown on the {image_side} of the picture."))
        answer = f"That is the {seg(item.name)}: the image {image_side} is the patient's {side}."
    return Turn(question, "implicit", answer, (item.key,), "laterality"), [item.key]


def _size(scene: Scene, rng: random.Random) -> Generated | None:
    pairs = []
    for item in scene.items.values():
        other = scene.sided_pair(item.key)
        if other is not None and item.entry.side == "left":
            big, small = (item, other) if item.area_mm2 >= other.area_mm2 else (other, item)
            if big.area_mm2 >= 1.2 * small.area_mm2:
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
    answer = (f"The {seg(chosen.name)} is {word}: {_cm2(chosen.area_mm2)} against "
              f"{_cm2(other.area_mm2)} on this slice.")
    return Turn(question, "implicit", answer, (chosen.key,), "size"), [chosen.key]


def _lesion_words(lesion: Item) -> str:
    density = lesion.attrs.get("density")
    return f"{density} lesion" if density else lesion.entry.name


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
    size = lesion.attrs.get("size_mm")
    detail = f" of about {size:.0f} mm" if size else ""
    answer = f"The {seg(host.name)}; it holds a {words}{detail}."
    return Turn(question, "implicit", answer, (host.key,), "lesion"), [host.key, lesion.key]


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
        answer = rng.choice((f"No, the {organ.name} looks normal on this slice; nothing to segment.",
                             f"The {organ.name} shows no lesion here."))
        return Turn(question, "absent", answer, (), "lesion"), [organ.key]
    lesion = lesions[0]
    count = int(lesion.attrs.get("count", 1))
    size = lesion.attrs.get("size_mm")
    if count > 1:
        answer = f"Yes: {_NUMBER_WORDS.get(count, str(count))} {seg(lesion.name)} in the {organ.name}."
    else:
        detail = f" of about {size:.0f} mm" if size else ""
        answer = f"Yes, a {seg(lesion.name)}{detail}."
    return Turn(question, "implicit", answer, (lesion.key,), "lesion"), [lesion.key, organ.key]


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
    count = int(lesion.attrs.get("count", 1))
    if count > 1:
        answer = f"There are {_NUMBER_WORDS.get(count, str(count))}: {seg(lesion.name)}."
    else:
        answer = f"Here is the {seg(lesion.name)}."
    return Turn(question, "explicit", answer, (lesion.key,)), [lesion.key]


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
    noun = "lesion" if count == 1 else "lesions"
    answer = f"{_NUMBER_WORDS.get(count, str(count)).capitalize()} {noun}: {seg(lesion.name)}."
    return Turn(question, "implicit", answer, (lesion.key,), "count"), [lesion.key, host.key]


def _multi(scene: Scene, rng: random.Random) -> Generated | None:
    items = [i for i in scene.items.values() if not i.is_lesion]
    if len(items) < 2:
        return None
    pair = None
    for item in items:
        other = scene.sided_pair(item.key)
        if other is not None and rng.random() < 0.5:
            pair = (item, other) if item.entry.side == "right" else (other, item)
            base = item.entry.pair or item.entry.name
            question = rng.choice((f"Segment both {base}.", f"Show me the two {base}.",
                                   f"Outline the {base} on both sides."))
            break
    if pair is None:
        first, second = rng.sample(items, 2)
        pair = (first, second)
        question = rng.choice((f"Segment the {first.name} and the {second.name}.",
                               f"Show me the {first.name} and the {second.name}.",
                               f"Outline both the {first.name} and the {second.name}."))
    answer = f"The {seg(pair[0].name)} and the {seg(pair[1].name)}."
    return Turn(question, "explicit", answer, (pair[0].key, pair[1].key)), [pair[0].key, pair[1].key]


def _absent(scene: Scene, rng: random.Random) -> Generated | None:
    choices: list[tuple[Structure, str]] = [(a.entry, a.reason) for a in scene.absences]
    if not choices or rng.random() < 0.4:
        present = {i.entry.key for i in scene.items.values()}
        impossible = absent_candidates(set(scene.regions), exclude=present)
        if impossible:
            entry = rng.choice(impossible)
            places = " or the ".join(entry.regions)
            choices = [(entry, f"this {scene.description} does not cover the {places}")]
    if not choices:
        return None
    entry, reason = rng.choice(choices)
    question = rng.choice(_ABSENT_Q).format(n=entry.name, be=entry.be, it="them" if entry.plural else "it")
    if rng.random() < 0.5 and entry.clues:
        question = f"Segment the {entry.noun} that {rng.choice(entry.clues)}."
    answer = rng.choice((f"There {entry.be} no {entry.name} in this image: {reason}.",
                         f"No {entry.name} {entry.be} visible here; {reason}.",
                         f"I cannot segment the {entry.name}: {reason}."))
    return Turn(question, "absent", answer, (), "absent"), []


# --------------------------------------------------------------------------- follow-ups


def _follow_other_side(scene: Scene, focus: list[str], rng: random.Random) -> Generated | None:
    if len(focus) != 1 or focus[0] not in scene.items:
        return None
    other = scene.sided_pair(focus[0])
    if other is None:
        return None
    question = rng.choice(("Now the other one.", "And the one on the other side?",
                           "Now segment its partner on the opposite side."))
    answer = f"The {seg(other.name)}, on the patient's {other.entry.side}."
    return Turn(question, "multi-turn", answer, (other.key,), "laterality"), [other.key]


def _follow_only_lesion(scene: Scene, focus: list[str], rng: random.Random) -> Generated | None:
    lesions = [les for key in focus[:1] for les in scene.lesions_of(key)]
    if not lesions:
        return None
    lesion = lesions[0]
    question = rng.choice(("Now only the lesion.", "Now segment just the lesion.",
                           "Show only the abnormal part.", "And the lesion itself?"))
    size = lesion.attrs.get("size_mm")
    detail = f", about {size:.0f} mm" if size else ""
    answer = f"The {seg(lesion.name)}{detail}."
    return Turn(question, "multi-turn", answer, (lesion.key,), "lesion"), [lesion.key]


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
    answer = f"The {seg(host.name)} contains it."
    return Turn(question, "multi-turn", answer, (host.key,), "containment"), [host.key]


def _follow_contained(scene: Scene, focus: list[str], rng: random.Random) -> Generated | None:
    if not focus:
        return None
    inner = [scene.items[k] for k in scene.contains.get(focus[0], []) if k in scene.items]
    inner = [i for i in inner if not i.is_lesion]
    if not inner:
        return None
    item = rng.choice(inner)
    question = rng.choice((f"Now only the {item.name} inside it.", f"And the {item.name} within it?",
                           f"Now just the {item.name}."))
    answer = f"The {seg(item.name)}, inside the {scene.items[focus[0]].name}."
    return Turn(question, "multi-turn", answer, (item.key,), "containment"), [item.key]


def _follow_lesion_free(scene: Scene, focus: list[str], rng: random.Random) -> Generated | None:
    if len(focus) != 1 or focus[0] not in scene.lesion_free:
        return None
    organ = scene.items[focus[0]]
    question = rng.choice(("Is there a lesion in it?", "Does it contain any lesion? Segment it.",
                           "Anything abnormal in it?"))
    answer = f"No, the {organ.name} shows no lesion on this slice."
    return Turn(question, "absent", answer, (), "lesion"), [organ.key]


def _follow_next(scene: Scene, focus: list[str], rng: random.Random) -> Generated | None:
    others = [i for i in scene.items.values() if i.key not in focus and not i.is_lesion]
    if not others:
        return None
    item = rng.choice(others)
    question = rng.choice((f"And the {item.name}?", f"Now the {item.name}.", f"What about the {item.name}?"))
    return Turn(question, "multi-turn", f"The {seg(item.name)}.", (item.key,)), [item.key]


_FIRST: tuple[tuple[Callable[[Scene, random.Random], Generated | None], float], ...] = (
    (_explicit, 2.0), (_implicit, 2.5), (_system, 0.5), (_laterality, 1.5), (_size, 1.2),
    (_lesion_host, 1.5), (_abnormal, 1.2), (_lesion_explicit, 0.8), (_count, 0.5), (_multi, 1.0),
    (_absent, 1.5),
)
_FOLLOW: tuple[tuple[Callable[[Scene, list[str], random.Random], Generated | None], float], ...] = (
    (_follow_other_side, 2.0), (_follow_only_lesion, 2.5), (_follow_container, 1.5),
    (_follow_contained, 1.5), (_follow_lesion_free, 1.0), (_follow_next, 0.7),
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
