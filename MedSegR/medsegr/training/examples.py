"""Dataset records -> training examples: the slice the encoder sees, the masks on the
encoder's input grid, and the token sequence with its answer labels.

The slice goes through exactly the inference path (:mod:`medsegr.imaging.slicing` display
orientation, :func:`medsegr.imaging.intensity.normalise`, letterboxing), so the model is
trained on what it is later shown.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medsegr.data.records import VolumeCache, is_absent_key
from medsegr.errors import InputError
from medsegr.imaging.measurements import measure_segment
from medsegr.imaging.preprocess import Letterbox, letterbox, letterbox_geometry, normalise
from medsegr.answers import MEASURED_SPAN_RE, Measurement, Turn, measured_span
from medsegr.prompts import render
from medsegr.imaging.slicing import SliceView

IGNORE = -100


@dataclass
class SliceInput:
    """One record's slice, ready for the frozen encoder."""

    record_id: str
    #: identifies the encoder input (a hash of its pixels): the embedding cache key
    cache_key: str
    #: ``(S, S)`` float32 in [0, 1], letterboxed encoder input
    pixels: np.ndarray
    #: mask key -> ``(S, S)`` bool on the encoder input grid
    masks: dict[str, np.ndarray]
    view: SliceView
    box: Letterbox


@dataclass
class Example:
    """A tokenised conversation of one record."""

    record_id: str
    cache_key: str
    input_ids: list[int]
    labels: list[int]
    #: ``(K, S, S)`` uint8: the masks of the K ``[SEG]`` tokens, in order
    masks: np.ndarray
    question_types: list[str]
    #: ``(S, S)`` float16: the encoder input (for the pixel refiner)
    pixels: np.ndarray | None = None
    #: the reasoning kinds its turns ask for (``size``, ``absent``, ...; see the dataset format)
    reasoning: tuple[str, ...] = ()


class ImageStore:
    """Images and label maps (through the data package's :class:`VolumeCache`) and the
    normalised intensities of the most recently used images (records of one volume come
    together in a dataset, so each volume is normalised about once while memory stays
    bounded by ``max_normalised`` volumes)."""

    def __init__(self, cache: VolumeCache | None = None, max_normalised: int = 8) -> None:
        self.cache = cache or VolumeCache(max_items=64)
        self.max_normalised = max_normalised
        self._normalised: OrderedDict[tuple[Path, str, str | None], np.ndarray] = OrderedDict()

    def normalised(self, record: Any, modality: str) -> np.ndarray:
        key = (record.image_path, modality, record.window)
        if key in self._normalised:
            self._normalised.move_to_end(key)
        else:
            self._normalised[key] = normalise(record.load_image(self.cache).array, modality,
                                              record.window)
            while len(self._normalised) > self.max_normalised:
                self._normalised.popitem(last=False)
        return self._normalised[key]


def slice_input(record: Any, store: ImageStore, size: int) -> SliceInput:
    """The encoder input and ground-truth masks of ``record`` (a dataset record)."""
    image = record.load_image(store.cache)
    modality = record.modality or image.modality
    view = record.slice_view(store.cache)
    shown = view.extract(store.normalised(record, modality))
    box = letterbox_geometry(shown.shape, view.pixel_spacing, size)
    pixels = letterbox(shown[None], box)[0, 0].numpy()
    masks = {key: letterbox(view.extract(mask).astype(np.float32)[None], box)[0, 0].numpy() > 0.5
             for key, mask in record.mask_arrays(store.cache).items()}
    # the encoder's output depends on its input pixels only: keyed by their content, an
    # embedding survives a rebuilt dataset (new files, same slices)
    digest = hashlib.sha256(np.ascontiguousarray(pixels, dtype=np.float32).tobytes()).hexdigest()
    cache_key = f"pixels-sha256:{digest}|{size}"
    return SliceInput(record_id=record.id, cache_key=cache_key, pixels=pixels, masks=masks,
                      view=view, box=box)


def slice_measurements(record: Any, store: ImageStore, view: SliceView,
                       keys: Sequence[str]) -> dict[str, Measurement]:
    """What the engine would measure on each mask ``key`` of ``record``'s slice (the
    ground truth's :func:`~medsegr.imaging.measurements.measure_segment`, a slice
    answer's): the measured spans that training conversations read after each ``[SEG]``."""
    image = record.load_image(store.cache)
    arrays = record.mask_arrays(store.cache)
    where: list[Any] = [slice(None)] * 3
    where[view.axis] = view.index
    out: dict[str, Measurement] = {}
    for key in dict.fromkeys(keys):
        if key not in arrays:
            continue
        only = np.zeros(image.shape, dtype=bool)
        only[tuple(where)] = arrays[key][tuple(where)]
        out[key] = measure_segment(image, only, volume=False, axis=view.axis)
    return out


def with_spans(answer: str, spans: Sequence[str], seg_token: str) -> str:
    """``answer`` with ``spans[j]`` written right after its ``j``-th ``seg_token``."""
    pieces = answer.split(seg_token)
    if len(pieces) - 1 != len(spans):
        raise InputError(f"{len(pieces) - 1} {seg_token} markers but {len(spans)} measured spans")
    out = pieces[0]
    for span, piece in zip(spans, pieces[1:]):
        out += seg_token + span + piece
    return out


def conversation_tokens(model: Any, turns: Sequence[Any],
                        spans: Sequence[Sequence[str]] | None = None) -> tuple[list[int], list[int]]:
    """Token ids of a whole conversation (image tokens expanded to the model's N visual
    tokens, in the first user turn) and labels that are the token ids on every assistant
    answer (and its end-of-turn token) and :data:`IGNORE` elsewhere.

    The prompt of turn k is tokenised exactly as the pipeline tokenises it at inference
    (the chat template over the turns so far). With ``spans`` (per turn, one measured
    span per ``[SEG]``; used when ``[model] measured_spans`` is on) each ``[SEG]`` is
    followed by its span, as the engine inserts it: the model reads the span (labels
    :data:`IGNORE`) and learns what follows it. The last answer is tokenised piece by
    piece as generation produces it (its text, ``[SEG]``, the span's own tokens, its text),
    the earlier ones as the whole rendered conversation (as the pipeline re-reads them).
    """
    cfg = model.config
    tok = model.tokenizer
    seg = cfg.model.seg_token
    use_spans = spans is not None and bool(getattr(cfg.model, "measured_spans", False))
    answers = [with_spans(t.answer, spans[k], seg) if use_spans else t.answer  # type: ignore[index]
               for k, t in enumerate(turns)]
    answered: list[Turn] = []
    starts: list[int] = []
    ids: list[int] = []
    text = ""
    for k, turn in enumerate(turns):
        current = Turn(question=turn.question, image_id="image" if k == 0 else None)
        text = render(tok, cfg.llm.system_prompt, answered + [current], cfg.model.image_token)
        prompt = tok.encode(text, add_special_tokens=False)
        starts.append(len(prompt))
        answered.append(Turn(question=turn.question, image_id=current.image_id,
                             answer=answers[k]))
        ids = prompt  # the last prompt holds every earlier answer
    read_only: set[int] = set()
    if use_spans:
        read_only = _span_positions(tok, text) if len(turns) > 1 else set()
        answer_ids = []
        pieces = answers[-1].split(seg)
        for j, piece in enumerate(pieces):
            if j > 0:
                answer_ids.append(model.seg_token_id)
                span = spans[-1][j - 1]  # type: ignore[index]
                piece = piece[len(span):]
                span_ids = tok.encode(span, add_special_tokens=False)
                read_only.update(range(len(ids) + len(answer_ids),
                                       len(ids) + len(answer_ids) + len(span_ids)))
                answer_ids += span_ids
            answer_ids += tok.encode(piece, add_special_tokens=False) if piece else []
        ids = ids + answer_ids
    else:
        ids = ids + tok.encode(turns[-1].answer, add_special_tokens=False)
    end = _end_of_turn_id(model)
    ids.append(end)
    labels = [IGNORE] * len(ids)
    for start in starts:
        stop = next((t for t in range(start, len(ids)) if ids[t] == end), len(ids) - 1)
        labels[start:stop + 1] = ids[start:stop + 1]
    for t in read_only:
        labels[t] = IGNORE
    return _expand_image_tokens(model, ids, labels)


def _span_positions(tok: Any, text: str) -> set[int]:
    """Token positions of ``tok.encode(text)`` that overlap a measured span of ``text``."""
    ranges = [m.span() for m in MEASURED_SPAN_RE.finditer(text)]
    if not ranges:
        return set()
    offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return {t for t, (a, b) in enumerate(offsets) if any(a < e and b > s for s, e in ranges)}


def _end_of_turn_id(model: Any) -> int:
    """The token that closes an assistant turn in the chat template (e.g. ``<|im_end|>``)."""
    tok = model.tokenizer
    text = render(tok, model.config.llm.system_prompt,
                  [Turn(question="q", image_id=None, answer="zq")], model.config.model.image_token)
    ids = tok.encode(text, add_special_tokens=False)
    answer = tok.encode("zq", add_special_tokens=False)
    for pos in range(len(ids) - len(answer), -1, -1):
        if ids[pos:pos + len(answer)] == answer:
            after = ids[pos + len(answer)]
            if after in model.eos_token_ids:
                return int(after)
            break
    eos = sorted(model.eos_token_ids)
    if not eos:
        raise InputError("the language model's tokenizer has no end-of-turn token")
    return int(eos[0])


def _expand_image_tokens(model: Any, ids: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
    n = model.num_visual_tokens
    out_ids: list[int] = []
    out_labels: list[int] = []
    for token, label in zip(ids, labels):
        if token == model.image_token_id:
            out_ids.extend([token] * n)
            out_labels.extend([IGNORE] * n)
        else:
            out_ids.append(token)
            out_labels.append(label)
    return out_ids, out_labels


def make_example(record: Any, model: Any, inputs: SliceInput, max_tokens: int,
                 store: ImageStore | None = None) -> Example:
    """Tokenise ``record``'s conversation and bind each ``[SEG]`` to its mask (with
    ``[model] measured_spans``, each ``[SEG]`` followed by the span measured on its
    ground-truth mask, from ``store``'s images)."""
    seg = model.config.model.seg_token
    keys: list[str] = []
    for k, turn in enumerate(record.conversation):
        count = turn.answer.count(seg)
        if count != len(turn.masks):
            raise InputError(f"record {record.id}, turn {k + 1}: {count} {seg} markers but "
                             f"{len(turn.masks)} masks")
        keys.extend(turn.masks)
    spans = None
    if getattr(model.config.model, "measured_spans", False):
        if store is None:
            raise ValueError("measured spans need the record's images (store)")
        measured = slice_measurements(record, store, inputs.view, keys)
        spans = [[measured_span(measured.get(k)) for k in turn.masks] for turn in record.conversation]
    ids, labels = conversation_tokens(model, record.conversation, spans)
    if len(ids) > max_tokens:
        raise InputError(f"record {record.id}: the conversation has {len(ids)} tokens, more than "
                         f"[data] max_tokens = {max_tokens}")
    if labels.count(model.seg_token_id) != len(keys):
        raise InputError(f"record {record.id}: {seg} does not tokenise to one id per marker")
    missing = [k for k in keys if k not in inputs.masks and not is_absent_key(k)]
    if missing:
        raise InputError(f"record {record.id}: unknown mask key(s) {', '.join(missing)}")
    size = inputs.pixels.shape[0]
    empty = np.zeros((size, size), dtype=bool)  # an absent structure's key: an empty mask
    masks = (np.stack([inputs.masks.get(k, empty) for k in keys]).astype(np.uint8) if keys
             else np.zeros((0, size, size), dtype=np.uint8))
    return Example(record_id=record.id, cache_key=inputs.cache_key, input_ids=ids,
                   labels=labels, masks=masks,
                   question_types=[str(t.type) for t in record.conversation],
                   pixels=inputs.pixels.astype(np.float16),
                   reasoning=tuple(str(t.reasoning) for t in record.conversation if t.reasoning))


def repeat_by_reasoning(examples: Sequence[Example], repeat: dict[str, int]) -> list[Example]:
    """``examples`` with each one whose conversation asks for a reasoning kind in
    ``repeat`` listed that many times (the largest count when it asks for several):
    rare kinds of question, such as size comparisons, are seen more often without
    rebuilding the dataset. Order is kept; the repeats follow their original."""
    out: list[Example] = []
    for example in examples:
        times = max((repeat.get(kind, 1) for kind in example.reasoning), default=1)
        out.extend([example] * max(1, times))
    return out
