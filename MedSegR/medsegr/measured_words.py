"""Measurement-guided words: where an answer states a side or a size comparison, the
engine picks the word from what it measured.

Under ``[model] measured_spans`` the engine decodes and measures each mask as soon as its
``[SEG]`` is generated and writes the measurements into the answer (" (measured: 12.3
cm², patient's left, …)"). The model reads them, but a 135 M language model does not
reliably turn two areas into "the larger is the left lung", or a measured side into "the
patient's left". With ``[generation] measured_words`` (on by default) the engine chooses
those words itself while the model writes, in four forms:

- **a size conclusion** "the larger is the ___" (also "bigger", "smaller", "the larger
  one was the ___"): the name of the structure with the largest (smallest) measured
  area or volume among those measured in the conversation, when two or more are;
- **a size word** after a measured name, "the left kidney is ___": "larger" ("bigger"
  when the model chose it) or "smaller", from that structure's measured size against the
  others, when it is the largest or the smallest of them;
- **a patient side** "the patient's ___": the measured side of the structure named last
  before it in the same clause (else sentence), else the patient side of an image side
  stated before it in the sentence;
- **an image side** "the image ___": the image side of the structure named last before
  it in the clause (else sentence), else of a patient side stated before it in the
  sentence. Image and patient sides are tied by the slice's display: axial and coronal
  slices show the patient's left on the image right (radiological view); sagittal
  slices and images without a patient orientation have no image side of the patient.

A size question ("Which kidney is larger here?", "Is it smaller than the other one?") is
answered in the trained form of a size answer, measuring before concluding:

- the engine starts the answer as every trained size answer starts: "Measuring both,
  the <p>" when nothing was measured before in the conversation (the model names the
  first structure), else "Measuring" (the model goes on with "its partner, the …" or
  "both, the …");
- once the first structure of "Measuring both" is measured, the engine goes on with
  " and the <p>" and its other-side partner (:func:`medsegr.vocabulary.partner`: the
  right kidney after the left kidney), and after "its partner, the <p>" it writes the
  partner of the sided structure measured last in the conversation; a structure
  without a partner (the lungs) is left to the model;
- once the structures the model chose are measured (two in "Measuring both", else one
  besides an earlier one), the engine writes the conclusion ": the larger is the ___"
  ("smaller" when the question asks for the smaller) with the name of the structure its
  measurements make the larger (smaller), as above.

The model chooses which structures to measure; the engine never concludes without two
measured sizes. An absent structure asked that way is measured, found absent ("not
found") and declined: no conclusion is written without two sizes.

A side stated before its structure is measured ("The right lung lies on the image ___:
the <p>right lung</p> [SEG]") cannot be chosen while the model writes it. When the answer
is complete, :meth:`MeasuredWords.settle` reads every stated side again, with all the
measurements of the answer, by the same rules (and in the form "the ___ of the image"),
and puts the measured side where the model's differs. The answer text and the
conversation carry the settled side; each change is on record like the others.

Apart from the size answers' frame, the model decides whether to state a fact, and
where: the engine only acts
when the model's own next word is one of the words it chooses between (a side, a size
word, or the first word of a measured name after a conclusion's "the"). A negated side
("not the patient's left") and a structure measured on both sides or on the midline are
left to the model. Nothing here reads the ground truth: only the engine's spans.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medsegr.answers import MEASURED_CLOSE, MEASURED_OPEN, MEASURED_SPAN_RE, strip_measured_spans
from medsegr.imaging.slicing import direction_matrix
from medsegr.prompts import clean_answer
from medsegr.vocabulary import partner

__all__ = ["SIZE_OPENER", "MeasuredWords", "MeasuredName", "display_patient_left", "measured_names",
           "size_question"]

_SIDES = ("left", "right")
_SIZE_WORDS = ("larger", "bigger", "smaller")
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(cm²|mL)")
_SIDE_RE = re.compile(r"patient's (left|right)")
_CONCLUSION_RE = re.compile(r"\bthe\s+(larger|bigger|smaller)(?:\s+one)?\s+(?:is|was)\s+the$", re.I)
_PATIENT_RE = re.compile(r"\bpatient(?:'|’)?s$", re.I)
_IMAGE_RE = re.compile(r"\bimage(?:'|’)?s?$", re.I)
_NEGATED_RE = re.compile(r"\b(?:not|rather\s+than|instead\s+of)\s+(?:(?:on|in|to|at|from)\s+)?(?:the\s+)?"
                         r"(?:patient(?:'|’)?s|image(?:'|’)?s?)$", re.I)
_STATED_RE = re.compile(r"\b(patient(?:'|’)?s|image(?:'|’)?s?)\s+(left|right)\b", re.I)
_SIZE_QUESTION_RE = re.compile(r"\b(?:larger|bigger|smaller|compares?\b[^.?!]*\bsize)\b", re.I)
_QUANTITY_RE = re.compile(r"\d\s*(?:mm|cm|ml|millimet|centimet)", re.I)
_SMALLER_RE = re.compile(r"\bsmaller\b", re.I)
_BOTH_RE = re.compile(r"^\s*Measuring\s+both\b", re.I)
_PARTNER_OPEN_RE = re.compile(r"^\s*Measuring\s+its\s+partner,\s+the\s+<p>$", re.I)
#: the first word of every trained size answer ("Measuring both, …", "Measuring its partner, …")
SIZE_OPENER = "Measuring"
#: a stated side, for :meth:`MeasuredWords.settle`: "patient's left", "image right" (group
#: 1: patient or image, 2: the side), "the left of the image" (3: the side)
_MENTION_RE = re.compile(r"\b(patient(?:'|’)?s|image(?:'s|’s)?)\s+(left|right)\b"
                         r"|\b(left|right)(?=\s+(?:side\s+|half\s+)?of\s+the\s+(?:image|picture)\b)", re.I)
_NEGATED_PLAIN_RE = re.compile(r"\b(?:not|rather\s+than|instead\s+of)\s+(?:(?:on|in|to|at|from)\s+)?"
                               r"(?:the\s+)?$", re.I)
_CLAUSE_RE = re.compile(r"[,;:()]")
_SENTENCE_RE = re.compile(r"[.!?](?=\s|$)")


@dataclass(frozen=True)
class MeasuredName:
    """A structure the engine measured in the conversation: its name, size (cm² on a
    slice, mL in a volume) and patient side (None, "left", "right", "both", "midline")."""

    name: str
    size: float | None
    side: str | None


def _spans(raw: str, seg_token: str) -> list[tuple[str, str]]:
    """``(name, span)`` of each measured ``<p>name</p> [SEG] (measured: span)`` of raw
    answer text, in order."""
    pattern = (r"<p>([^<]*)</p>\s*" + re.escape(seg_token) + re.escape(MEASURED_OPEN) + r"([^()]*)"
               + re.escape(MEASURED_CLOSE))
    return [(m.group(1).strip(), m.group(2)) for m in re.finditer(pattern, raw)]


def measured_names(raw: str, seg_token: str = "[SEG]") -> dict[str, MeasuredName]:
    """The measured structures of raw answer text (``<p>name</p> [SEG] (measured: …)``, with
    the model's ``seg_token``), by lower-case name; a name measured twice keeps its last
    measurement. "not found" spans are left out."""
    out: dict[str, MeasuredName] = {}
    for name, span in _spans(raw, seg_token):
        if not name or span.strip() == "not found":
            continue
        size = _SIZE_RE.search(span)
        side = _SIDE_RE.search(span)
        out[name.lower()] = MeasuredName(
            name, float(size.group(1)) if size else None,
            side.group(1) if side else ("both" if "both sides" in span else "midline" if "midline" in span else None))
    return out


def size_question(question: str) -> bool:
    """Whether ``question`` asks to compare the sizes of two structures ("Which lung looks
    smaller here?", "Is it larger than the other one?", "How does it compare in size with
    its partner?"); a size against a number ("a lesion larger than 2 cm") is not."""
    return bool(_SIZE_QUESTION_RE.search(question)) and not _QUANTITY_RE.search(question)


def display_patient_left(direction: Sequence[float], axis: int, modality: str) -> str | None:
    """The image side ("right") that shows the patient's left on slices along numpy
    ``axis`` of an image with ``direction``: axial and coronal slices are shown in the
    radiological view (:mod:`medsegr.imaging.slicing`); None for sagittal slices and for
    images without a patient orientation (``OT``)."""
    if modality == "OT":
        return None
    normal = direction_matrix(tuple(direction))[:, 2 - axis]
    lps = int(np.argmax(np.abs(normal)))  # 0: L (sagittal), 1: P (coronal), 2: S (axial)
    return None if lps == 0 else "right"


def _piece_start(text: str, pattern: re.Pattern[str]) -> int:
    cuts = [m.end() for m in pattern.finditer(text)]
    return cuts[-1] if cuts else 0


def _other(side: str) -> str:
    return "right" if side == "left" else "left"


class MeasuredWords:
    """The ``constrain(generated_ids, logits)`` hook of :func:`medsegr.modeling.generation.generate`
    for one answer: it may force the next token (module docstring).

    ``earlier``: the raw text of the conversation's earlier answers (their spans count as
    measured); ``patient_left``: the image side showing the patient's left on the slice
    the model reads (:func:`display_patient_left`), None when unknown; ``seg_token``:
    the model's ``[SEG]`` marker; ``question``: the question answered (a size question
    opens with :data:`SIZE_OPENER`)."""

    def __init__(self, tokenizer: Any, earlier: Sequence[str] = (), patient_left: str | None = None,
                 seg_token: str = "[SEG]", question: str = "") -> None:
        self.tokenizer = tokenizer
        self.seg_token = seg_token
        self.earlier = "\n".join(earlier)
        self.patient_left = patient_left
        self._forced: list[int] = []
        #: the structures the earlier answers measured (found), lower case, in order
        self._before = [name.lower() for name, span in _spans(self.earlier, seg_token)
                        if span.strip() != "not found"]
        # with nothing measured before, a comparison measures both now
        opener = SIZE_OPENER if self._before else SIZE_OPENER + " both, the <p>"
        self._opener = (self.tokenizer.encode(opener, add_special_tokens=False)
                        if size_question(question) else [])
        self._opener_text = self._shown(opener)
        #: a size answer's conclusion word, from the question
        self._conclusion_word = "smaller" if _SMALLER_RE.search(question) else "larger"
        self._seg_id = tokenizer.convert_tokens_to_ids(seg_token)
        self._scanned = 0         # tokens of the answer already looked at for a new [SEG]
        self._concluded = False   # the size answer's conclusion is written
        self._name_next = False   # the next word is the conclusion's name: the engine's
        self._candidates: set[str] = set()  # the structures that conclusion compares
        self._ids = {word: self._token(" " + word) for word in (*_SIDES, *_SIZE_WORDS)}
        self._words = {tid: word for word, tid in self._ids.items() if tid is not None}
        self._the = self._token(" the")
        #: what the engine chose, for the answer's record: (the model's word, the engine's)
        self.changes: list[tuple[str, str]] = []

    def _shown(self, text: str) -> str:
        """Forced text as the answer's record shows it: no tags, no edge punctuation."""
        return clean_answer(text.replace("<p>", ""), self.seg_token).strip(" :;,")

    def _token(self, text: str) -> int | None:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return int(ids[0]) if len(ids) == 1 else None

    def _force(self, logits: torch.Tensor, token: int) -> None:
        logits.fill_(float("-inf"))
        logits[token] = 0.0

    def __call__(self, generated: Sequence[int], logits: torch.Tensor) -> None:
        if self._forced:
            self._force(logits, self._forced.pop(0))
            return
        top = int(torch.argmax(logits))
        if not generated and self._opener:
            if top != self._opener[0]:
                self.changes.append((self.tokenizer.decode([top]).strip(), self._opener_text))
            self._force(logits, self._opener[0])
            self._forced = list(self._opener[1:])
            return
        if self._opener and not self._concluded:
            frame = self._size_frame(generated)
            if frame is not None:
                self._write(logits, top, frame)
                return
        if top not in self._words and (not generated or int(generated[-1]) != self._the):
            return  # neither a side or size word nor the "the" before a conclusion's name
        raw = self.tokenizer.decode(list(generated), skip_special_tokens=False)
        measured = measured_names(self.earlier + "\n" + raw, self.seg_token)
        text = clean_answer(strip_measured_spans(raw), self.seg_token)
        choice = self._choose(top, text, measured)
        if choice is None:
            return
        ids = [int(t) for t in self.tokenizer.encode(" " + choice, add_special_tokens=False)]
        if not ids:
            return
        if ids[0] != top:
            self.changes.append((self.tokenizer.decode([top]).strip(), choice))
        self._force(logits, ids[0])
        self._forced = ids[1:]

    # -- after the answer ------------------------------------------------------------
    def settle(self, raw: str) -> str:
        """``raw``, the complete answer (``<p>`` names, ``[SEG]`` markers, measured spans),
        with each stated patient or image side that the answer's measurements decide
        otherwise replaced by the measured one (module docstring). Spans and names are
        left as they are; each change is added to :attr:`changes`."""
        measured = measured_names(self.earlier + "\n" + raw, self.seg_token)
        if not measured:
            return raw
        out: list[str] = []
        spoken = ""  # the answer so far without its spans: what the rules read
        pos = 0
        for span in [*MEASURED_SPAN_RE.finditer(raw), None]:
            end = span.start() if span is not None else len(raw)
            piece = self._settle_piece(spoken, raw[pos:end], measured)
            out.append(piece)
            spoken += piece
            if span is not None:
                out.append(span.group(0))
                pos = span.end()
        return "".join(out)

    def _settle_piece(self, spoken: str, piece: str, measured: dict[str, MeasuredName]) -> str:
        done = ""  # the piece up to ``cursor``, settled
        cursor = 0
        for mention in _MENTION_RE.finditer(piece):
            plain = mention.group(3) is not None  # "the left of the image"
            word, at = (mention.group(3), mention.start(3)) if plain else (mention.group(2), mention.start(2))
            before = clean_answer(spoken + done + piece[cursor:at], self.seg_token)
            choice = self._side(before, measured, "image" if plain else None)
            done += piece[cursor:at]
            if choice is not None and choice != word.lower():
                self.changes.append((word.lower(), choice))
                word = choice.capitalize() if word[0].isupper() else choice
            done += word
            cursor = at + len(mention.group(3) if plain else mention.group(2))
        return done + piece[cursor:]

    # -- a size answer's frame ------------------------------------------------------
    def _write(self, logits: torch.Tensor, top: int, text: str) -> None:
        """Force ``text`` from this step on (its first token now, the rest on the next
        steps) and put it on record when the model's own next token was another."""
        ids = [int(t) for t in self.tokenizer.encode(text, add_special_tokens=False)]
        if ids[0] != top:
            self.changes.append((self.tokenizer.decode([top]).strip(), self._shown(text)))
        self._force(logits, ids[0])
        self._forced = ids[1:]

    def _size_frame(self, generated: Sequence[int]) -> str | None:
        """In a size answer: the partner's name after "Measuring its partner, the <p>";
        in "Measuring both", the other-side partner of the first structure measured; the
        conclusion's opening once the structures the answer measures are measured (module
        docstring). None where the model goes on by itself."""
        new = generated[self._scanned:]
        self._scanned = len(generated)
        if len(generated) <= 12:
            raw = self.tokenizer.decode(list(generated), skip_special_tokens=False)
            if _PARTNER_OPEN_RE.search(raw):
                return self._partner_name()
        if self._seg_id not in new:
            return None
        raw = self.tokenizer.decode(list(generated), skip_special_tokens=False)
        if not raw.rstrip().endswith(")"):
            return None  # the [SEG]'s span is not in yet (no measured spans)
        now = {k for k, m in measured_names(raw, self.seg_token).items() if m.size is not None}
        every = {k for k, m in measured_names(self.earlier + "\n" + raw, self.seg_token).items()
                 if m.size is not None}
        both = bool(_BOTH_RE.search(clean_answer(raw, self.seg_token)))
        named = [n.strip().lower() for n in re.findall(r"<p>([^<]*)</p>", raw)]
        if both and len(now) == 1 and len(named) == 1:
            other = partner(named[0])
            if other is not None:
                return " and the <p>" + other.name
        if len(now) < (2 if both else 1) or len(every) < 2:
            return None
        # what the conclusion compares: this answer's structures, and in a follow-up
        # the partner measured before (else the structure measured last before)
        candidates = set(now)
        if len(candidates) < 2:
            before = [k for k in self._before if k in every]
            paired = [k for k in before if (p := partner(k)) is not None and p.name.lower() in now]
            candidates.update(paired[-1:] or before[-1:])
        if len(candidates) < 2:
            return None
        self._concluded = True
        self._name_next = True
        self._candidates = candidates
        return f": the {self._conclusion_word} is the"

    def _partner_name(self) -> str | None:
        for name in reversed(self._before):
            other = partner(name)
            if other is not None:
                return other.name
        return None

    # -- the four forms ------------------------------------------------------------
    def _choose(self, top: int, text: str, measured: dict[str, MeasuredName]) -> str | None:
        sized = {k: m for k, m in measured.items() if m.size is not None}
        if self._name_next:  # the engine's own conclusion: among the structures it compares
            sized = {k: m for k, m in sized.items() if k in self._candidates}
        conclusion = _CONCLUSION_RE.search(text) if len(sized) >= 2 else None
        if conclusion is not None:
            word = conclusion.group(1).lower()
            firsts = {self.tokenizer.encode(" " + m.name, add_special_tokens=False)[0] for m in sized.values()}
            if top not in firsts and not self._name_next:
                return None
            self._name_next = False
            pick = (min if word == "smaller" else max)(sized.values(), key=lambda m: m.size or 0.0)
            if sum(m.size == pick.size for m in sized.values()) > 1:
                return None  # a tie: nothing to conclude from
            return pick.name
        word = self._words.get(top)
        if word is None:
            return None
        if word in _SIZE_WORDS:
            return self._size_word(word, text, sized)
        return self._side(text, measured)

    def _size_word(self, word: str, text: str, sized: dict[str, MeasuredName]) -> str | None:
        if len(sized) < 2:
            return None
        name = next((m for m in sorted(sized.values(), key=lambda m: -len(m.name))
                     if re.search(rf"\bthe\s+{re.escape(m.name)}\s+is$", text, re.I)), None)
        if name is None:
            return None
        sizes = sorted(m.size or 0.0 for m in sized.values())
        if sizes.count(name.size or 0.0) > 1:
            return None
        if name.size == sizes[-1]:
            return word if word in ("larger", "bigger") else "larger"
        if name.size == sizes[0]:
            return "smaller"
        return None

    def _side(self, text: str, measured: dict[str, MeasuredName], kind: str | None = None) -> str | None:
        """The side word after ``text``: of the patient when ``text`` ends with "the
        patient's", of the image when it ends with "the image" or ``kind`` is "image"
        (the form "the ___ of the image")."""
        if kind is None:
            patient = bool(_PATIENT_RE.search(text))
            if not patient and not _IMAGE_RE.search(text):
                return None
            if _NEGATED_RE.search(text):
                return None
        else:
            patient = kind == "patient"
            if _NEGATED_PLAIN_RE.search(text):
                return None
        for start in (_piece_start(text, _CLAUSE_RE), _piece_start(text, _SENTENCE_RE)):
            piece = text[start:]
            named = self._last_named(piece, measured)
            if named is not None:
                if named.side not in _SIDES:
                    return None
                return named.side if patient else self._image_side(named.side)
        sentence = text[_piece_start(text, _SENTENCE_RE):]
        stated = list(_STATED_RE.finditer(sentence))
        if not stated or self.patient_left is None:
            return None
        kind, side = stated[-1].group(1).lower(), stated[-1].group(2).lower()
        was_patient = kind.startswith("patient")
        if was_patient == patient:
            return None  # the same kind of side again: nothing ties them
        return self._image_side(side) if was_patient else self._patient_side(side)

    def _last_named(self, piece: str, measured: dict[str, MeasuredName]) -> MeasuredName | None:
        best: tuple[int, MeasuredName] | None = None
        for m in measured.values():
            for hit in re.finditer(rf"(?<![\w-]){re.escape(m.name)}(?![\w-])", piece, re.I):
                if best is None or hit.end() > best[0] or hit.end() == best[0] and len(m.name) > len(best[1].name):
                    best = (hit.end(), m)
        return None if best is None else best[1]

    def _image_side(self, patient_side: str) -> str | None:
        if self.patient_left is None:
            return None
        return self.patient_left if patient_side == "left" else _other(self.patient_left)

    def _patient_side(self, image_side: str) -> str | None:
        if self.patient_left is None:
            return None
        return "left" if image_side == self.patient_left else "right"
